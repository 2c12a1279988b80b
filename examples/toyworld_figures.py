"""The README's pictures, made with the trained toy world (../shared/toyworld) instead of random
weights: ranked results with the judge's verdicts, the denoising process, removal with the empty
prompt, and the background-reconstruction comparison (paper figure 4).

    python examples/toyworld_figures.py docs        # writes docs/toyworld/*.png, docs/background/*

Everything is seeded: the same versions make the same pictures. About two CPU-minutes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from blendedit import BlendedLatentDiffusion
from blendedit.cli import main as blendedit_main
from blendedit.eval.metrics import images_to_tensor
from blendedit.eval.toyworld import World, centred_box, square_mask
from blendedit.io import save_png

CELL = 128  # px per picture in the figures (the 64 px scenes shown at 2x, nearest)
RUN = {"num_inference_steps": 50, "guidance_scale": 5.0}
RANKED = [(3, 12), (5, 1), (7, 26), (12, 8)]  # (scene index, target class): prompt = its caption
REMOVED = (3, 5, 7, 12)


def shown(image: Image.Image, box: tuple[int, int, int, int] | None = None) -> Image.Image:
    out = image.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)
    if box is not None:
        s = CELL / image.width
        ImageDraw.Draw(out).rectangle([round(v * s) for v in box], outline=(255, 40, 40))
    return out


def sheet(rows: list[list[tuple[Image.Image, str]]], title: str) -> Image.Image:
    """A grid of labelled cells: rows of (picture, caption)."""
    label, head = 30, 24
    cols = max(len(r) for r in rows)
    fig = Image.new("RGB", (cols * (CELL + 4), head + len(rows) * (CELL + label)), "white")
    d = ImageDraw.Draw(fig)
    d.text((4, 6), title, fill="black")
    for i, row in enumerate(rows):
        y = head + i * (CELL + label)
        for j, (pic, text) in enumerate(row):
            x = j * (CELL + 4)
            fig.paste(pic, (x, y))
            for k, line in enumerate(text.split("\n")[:2]):
                d.text((x + 2, y + CELL + 2 + 13 * k), line, fill="black")
    return fig


def ranked_figure(world: World, editor: BlendedLatentDiffusion, out: Path) -> None:
    judge = world.classifier()
    rows = []
    for index, target in RANKED:
        image, labels = world.scene(index)
        box = centred_box(labels, 28)
        prompt = world.caption(target)
        r = editor(image, square_mask(image.size, box), prompt, seed=0, num_images=8, **RUN)
        x = images_to_tensor([c.image for c in r.candidates])
        named = judge.classify(x, torch.tensor([box] * len(x))).tolist()
        row = [(shown(image, box), f"input\n'{prompt}'")]
        for c, cls in zip(r.candidates, named, strict=True):
            verdict = "ok" if cls == target else f"no: {world.caption(cls)[2:]}"
            row.append((shown(c.image), f"#{c.rank} CLIP {c.score:.3f}\n{verdict}"))
        rows.append(row)
    title = (
        "Ranked results (best first), 8 seeds, toy world; under each: CLIP score and the "
        "toy classifier's verdict in the red box"
    )
    save_png(sheet(rows, title), out / "ranked.png")


def process_figure(world: World, editor: BlendedLatentDiffusion, out: Path) -> None:
    index, target = RANKED[0]
    image, labels = world.scene(index)
    box = centred_box(labels, 28)
    prompt = world.caption(target)
    r = editor(
        image, square_mask(image.size, box), prompt, seed=0, num_images=8, return_process=True,
        **RUN,
    )  # fmt: skip
    frames = r.best.process
    picks = np.linspace(0, len(frames) - 1, 10).round().astype(int)
    row = [(shown(image, box), f"input\n'{prompt}'")]
    row += [(shown(frames[i]), f"step {i + 1}/{len(frames)}") for i in picks]
    row.append((shown(r.best.image), "result"))
    title = (
        "The denoising process of the best result (paper fig. 6): the blended one-step clean "
        "estimate at each step"
    )
    save_png(sheet([row], title), out / "process.png")


def removal_figure(world: World, editor: BlendedLatentDiffusion, out: Path) -> None:
    judge = world.classifier()
    rows = []
    for index in REMOVED:
        image, labels = world.scene(index)
        box = centred_box(labels, 28)
        r = editor(image, square_mask(image.size, box), "", seed=0, num_images=4, **RUN)
        x = images_to_tensor([c.image for c in r.candidates])
        named = judge.classify(x, torch.tensor([box] * len(x))).tolist()
        row = [(shown(image, box), f"input: {world.caption(world.class_of(labels))[2:]}")]
        row += [
            (shown(c.image), f"seed {c.seed}\nsees: {world.caption(n)[2:]}")
            for c, n in zip(r.candidates, named, strict=True)
        ]
        rows.append(row)
    title = "Removal: the empty prompt fills the box from its surroundings (4 seeds, unranked)"
    save_png(sheet(rows, title), out / "removal.png")


def background_figure(world: World, docs: Path) -> None:
    """`blendedit compare-backgrounds` on one scene, into docs/background/."""
    index, target = RANKED[2]
    image, labels = world.scene(index)
    with tempfile.TemporaryDirectory() as tmp:
        photo, mask = Path(tmp) / f"scene-{index:04d}.png", Path(tmp) / "mask.png"
        image.save(photo)
        Image.fromarray(square_mask(image.size, centred_box(labels, 28))).save(mask)
        run = Path(tmp) / "out"
        argv = ["compare-backgrounds", str(photo), "--mask", str(mask)]
        argv += ["--prompt", world.caption(target), "--model", str(world.sd), "--no-rank"]
        argv += [
            "--steps",
            "50",
            "--guidance",
            "5",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(run),
        ]
        assert blendedit_main(argv) == 0
        (docs / "background").mkdir(parents=True, exist_ok=True)
        for name in ("comparison.png", "comparison.md"):
            shutil.copyfile(run / name, docs / "background" / name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("docs", type=Path, help="the docs folder (writes toyworld/ and background/)")
    ap.add_argument("--only-background", action="store_true", help="remake docs/background/ only")
    a = ap.parse_args()
    world = World()
    editor = BlendedLatentDiffusion.from_pretrained(world.sd, clip_model=str(world.clip))
    out = a.docs / "toyworld"
    out.mkdir(parents=True, exist_ok=True)
    if not a.only_background:
        ranked_figure(world, editor, out)
        process_figure(world, editor, out)
        removal_figure(world, editor, out)
    background_figure(world, a.docs)
    print(f"wrote {out}/ranked.png, process.png, removal.png and {a.docs}/background/")


if __name__ == "__main__":
    main()
