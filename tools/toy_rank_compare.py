"""CLIP's top-1 against an ensemble's top-1 on the trained toy world: does a judge of the whole
image pick results with a lower seam score and a higher background fidelity, at equal prompt
precision (the toy classifier)?

Per held-out scene (generator seed 1, an object of at most 24 px, a 28x28 mask over it, another
caption; as tests/quality), blendedit edits N candidates unranked; each candidate gets CLIP's
score (masked result against the caption, the papers' ranking) and the toy realism judge's
(whole image; ``tools/train_toy_realism.py``). CLIP's top-1 and the ensemble's top-1 (per-batch
z-scores, weights ``clip=1,realism=1``, :func:`blendedit.frame.judges.ensemble`) are compared on
the classifier's verdict, the seam score and PSNR outside the mask. Writes
docs/eval-toyworld/judges.md and judges.json.

    PYTHONPATH=src python tools/toy_rank_compare.py [--cases 30] [--candidates 8] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "quality"))  # the quality tests' cases and verdicts

from toy_cases import replace_cases, verdicts  # noqa: E402

from blendedit.eval.metrics import images_to_tensor  # noqa: E402
from blendedit.eval.toy_realism import ToyRealismJudge  # noqa: E402
from blendedit.frame.judges import ensemble  # noqa: E402
from blendedit.frame.metrics import masked_psnr, seam_score  # noqa: E402

REALISM = ROOT / "tools" / "toy_realism.safetensors"
RUN = {"num_inference_steps": 50, "guidance_scale": 5.0, "blend_start": 0.25,
       "background": "decoded", "region": "full", "rank": False}  # fmt: skip


def case_rows(editor, realism, judge, caption: str, case, n: int, run: dict) -> dict:
    """Every candidate of one case: its CLIP and realism scores, verdict, seam, background PSNR."""
    res = editor(case.image, case.mask, caption, num_images=n, seed=case.index, **run)
    images = [c.image.convert("RGB") for c in res.candidates]
    x = images_to_tensor(images)  # (n, 3, 64, 64) in [0, 1]
    src = images_to_tensor([case.image.convert("RGB")]).expand_as(x)
    m = torch.from_numpy(case.mask > 0).float()[None, None]  # (1, 1, 64, 64)
    return {
        "clip": editor.clip.score(x, m, caption).tolist(),
        "realism": realism.score(x, m, caption).tolist(),
        "correct": verdicts(judge, images, case.box, case.target).astype(float).tolist(),
        "seam": seam_score(x, src, m.expand(len(images), -1, -1, -1)).tolist(),
        "bg_psnr": masked_psnr(x, src, (1 - m).expand(len(images), -1, -1, -1)).tolist(),
    }


def compare(rows: list[dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Means over the cases of each ranking's top-1 (and of the whole batch, and unranked)."""
    picks: dict[str, list[dict[str, float]]] = {"clip": [], "ensemble": [], "batch": [],
                                                 "first": []}  # fmt: skip
    for r in rows:
        clip, real = torch.tensor(r["clip"]), torch.tensor(r["realism"])
        both = ensemble({"clip": clip, "realism": real}, {"clip": 1.0, "realism": 1.0})
        for name, idx in (("clip", int(clip.argmax())), ("ensemble", int(both.argmax())),
                          ("first", 0)):  # fmt: skip
            picks[name].append({k: r[k][idx] for k in ("correct", "seam", "bg_psnr")})
        picks["batch"].append({k: float(np.mean(r[k])) for k in ("correct", "seam", "bg_psnr")})
    return {
        name: {k: float(np.mean([p[k] for p in ps])) for k in ("correct", "seam", "bg_psnr")}
        for name, ps in picks.items()
    }


def report(summary: dict, n_cases: int, n: int, seconds: float, info: dict, steps: int) -> str:
    lines = [
        "# Judges on the toy world: CLIP's top-1 against an ensemble's",
        "",
        f"Written by `tools/toy_rank_compare.py` on a {torch.get_num_threads()}-thread CPU "
        f"({platform.machine()}, this sandbox, shared with other jobs) in {seconds:.0f} s: "
        f"{n_cases} held-out scenes, {n} candidates each, {steps} DDIM steps, guidance 5, blend start "
        "0.25, `--background decoded` (the decoder's output outside the mask, so background "
        "fidelity varies between candidates; with `stitch` it is the photo's own), "
        "`--region full` at 64 px. The realism judge: "
        f"{info.get('parameters', '?')} parameters, held-out accuracy "
        f"{100 * info.get('held_out_accuracy', float('nan')):.1f}% on real scenes against "
        "composites (`tools/train_toy_realism.py`).",
        "",
        "| pick | precision (classifier) | seam score (lower is better) | PSNR outside the mask, dB |",
        "|---|---:|---:|---:|",
    ]
    names = {"clip": "CLIP top-1 (the papers')", "ensemble": "ensemble top-1 (clip=1, realism=1)",
             "first": "first generated (unranked)", "batch": "batch mean"}  # fmt: skip
    for key, label in names.items():
        s = summary[key]
        lines.append(f"| {label} | {100 * s['correct']:.1f}% | {s['seam']:.4f} | "
                     f"{s['bg_psnr']:.2f} |")  # fmt: skip
    c, e = summary["clip"], summary["ensemble"]
    verdict = (
        "lower seam score and higher background fidelity"
        if e["seam"] < c["seam"] and e["bg_psnr"] > c["bg_psnr"]
        else "not both a lower seam score and a higher background fidelity"
    )
    lines += ["", f"The ensemble's top-1 has {verdict} than CLIP's, at precision "
              f"{100 * e['correct']:.1f}% against {100 * c['correct']:.1f}% "
              f"(one case is {100 / n_cases:.1f} points: read small differences as noise)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_flush_denormal(True)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=30)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "eval-toyworld")
    p.add_argument("--realism", type=Path, default=REALISM, help="the realism judge's weights")
    args = p.parse_args()
    from blendedit import BlendedLatentDiffusion
    from blendedit.eval.toyworld import World

    world = World()
    editor = BlendedLatentDiffusion.from_pretrained(world.sd, clip_model=str(world.clip))
    realism, judge = ToyRealismJudge.from_file(args.realism), world.classifier()
    run = {**RUN, "num_inference_steps": args.steps}
    t0 = time.perf_counter()
    rows = []
    for i, c in enumerate(replace_cases(world, args.cases)):
        rows.append(
            case_rows(editor, realism, judge, world.caption(c.target), c, args.candidates, run)
        )
        print(f"case {i + 1}/{args.cases} ({time.perf_counter() - t0:.0f} s)", flush=True)
    summary = compare(rows)
    info = json.loads(args.realism.with_suffix(".json").read_text())
    seconds = time.perf_counter() - t0
    text = report(summary, args.cases, args.candidates, seconds, info, args.steps)
    (args.out / "judges.md").write_text(text)
    (args.out / "judges.json").write_text(json.dumps({"summary": summary, "rows": rows}) + "\n")
    print(text)


if __name__ == "__main__":
    main()
