"""Copy the main toy-world evaluation into docs/eval-toyworld/ and tabulate the ablation runs.

python docs/eval-toyworld/summarize.py WORK DOCS   (make.sh calls it)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from PIL import Image

ABLATIONS = {  # run folder -> what changed against the main run's `latent`
    "main": "BLD as in the main run (guidance 5, blend start 0.25, shrinking auto)",
    "guidance-0": "control: guidance 0 (the empty prompt's prediction; ranked by the caption)",
    "blend-start-0.5": "blend start 0.5 (half the schedule skipped: 13 of 25 steps run)",
    "shrink-on": "progressive mask shrinking forced on (auto: off for these rectangles)",
}


def pct(x: float | None, se: float | None = None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" + (f" ± {100 * se:.1f}" if se is not None else "")


def clean(text: str, work: Path, world: Path) -> str:
    """Machine-specific folders -> the names make.sh uses."""
    for path, name in ((world, "../shared/toyworld"), (work, "WORK")):
        text = text.replace(str(path.resolve()), name).replace(str(path), name)
    return text


def main(work: Path, docs: Path, world: Path) -> None:
    for name in ("report.md", "report.json"):
        text = (work / "main" / name).read_text(encoding="utf-8")
        (docs / name).write_text(clean(text, work, world), encoding="utf-8")
    shutil.copyfile(work / "main" / "precision_vs_time.png", docs / "precision_vs_time.png")
    # The grid at half size in 256 colours: a few hundred kB instead of 3 MB in the repository.
    with Image.open(work / "main" / "grid.png") as grid:
        small = grid.convert("RGB").resize((grid.width // 2, grid.height // 2), Image.LANCZOS)
        small.quantize(256).save(docs / "grid.png", optimize=True)
    rows = []
    for run, what in ABLATIONS.items():
        path = work / run / "report.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())["methods"]["latent"]
        r, t = m["results"], m["time"]
        bg = r["background_top1"]
        rows.append(
            f"| {what} (`{run}`) | {pct(r['precision_batch'], r['precision_batch_se'])} | "
            f"{pct(r['precision_top1'], r['precision_top1_se'])} | "
            f"{pct(r.get('precision_first'), r.get('precision_first_se'))} | "
            f"{bg['psnr']:.2f} | {t['batch_mean_s']:.2f} |"
        )
    text = [
        "# Ablations of Blended Latent Diffusion on the toy world\n",
        "Same inputs, prompts and seeds as `report.md` (`latent`: stitched background); one "
        "setting changed per row. *First*: the first prediction generated, i.e. without "
        "ranking. Made by `bash docs/eval-toyworld/make.sh`.\n",
        "| run | precision, batch | top-1 (CLIP-ranked) | first (unranked) | background PSNR, "
        "top-1 (dB) | batch time (s) |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    (docs / "ablations.md").write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {docs}/ablations.md and the main report")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
