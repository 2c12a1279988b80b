"""Measure the toy text segmenter (``examples/toy-segmenter``, trained by
``tools/train_toy_segmenter.py``) on held-out scenes of the toy world, and write
``docs/segment-toyworld.md``.

1. Text -> mask IoU for "a {colour} {shape}" on held-out scenes (generator seed 1): the main
   object and the distractors (every object of the named class is the target), against the
   control of a caption naming a class absent from the scene (its mask should be empty).
2. An edit by text selection alone ("select: a red circle", prompt another caption) against the
   same edit with the hand-made 28 px box mask over the object: classifier precision (batch and
   CLIP top-1), judged on the same square.

    python tools/toy_segmenter_report.py [--scenes 200] [--edits 16] [--out docs/segment-toyworld.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests" / "quality"))

from train_toy_segmenter import scene_objects, target  # noqa: E402

from blendedit.config import SelectConfig  # noqa: E402
from blendedit.eval.toyworld import World, import_world  # noqa: E402
from blendedit.segment import Selection, load_segmenter, select_mask  # noqa: E402

SEGMENTER = ROOT / "examples" / "toy-segmenter"
EDIT = {"num_inference_steps": 10, "guidance_scale": 5.0, "metrics": False}
GROW = 3  # px the text mask is grown by: room for the new object's outline (the box has ~4)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = (pred | truth).sum()
    return float((pred & truth).sum() / union) if union else 1.0


def mask_ious(seg, data, n: int) -> dict[str, list[float]]:
    """IoU per query: main objects, distractors, and the absent-class control (IoU of its mask
    with the main object's) and its selected share of the photo."""
    from PIL import Image

    out: dict[str, list[float]] = {"main": [], "distractor": [], "control": [], "control_area": []}
    rng = np.random.default_rng(1)
    for i in range(n):
        img, objects = scene_objects(data, 1, i)
        image = Image.fromarray(img)
        present = {(s, c) for s, c, _ in objects}
        for k, (s, c, _) in enumerate(objects):
            if k < len(objects) - 1 and (s, c) == objects[-1][:2]:
                continue  # a distractor of the main object's class: counted with it
            truth = target(objects, s, c) >= 0.5
            pred = seg.segment(image, Selection(text=data.caption(s, c))).mask >= 0.5
            out["main" if k == len(objects) - 1 else "distractor"].append(iou(pred, truth))
        absent = [(s, c) for c in range(6) for s in range(5) if (s, c) not in present]
        s, c = absent[rng.integers(len(absent))]
        pred = seg.segment(image, Selection(text=data.caption(s, c))).mask >= 0.5
        out["control"].append(iou(pred, target(objects, *objects[-1][:2]) >= 0.5))
        out["control_area"].append(float(pred.mean()))
    return out


def edit_precision(seg, world: World, n: int) -> dict[str, list[float]]:
    """Per case: precision of the batch and the top-1, with the text selection's mask and with
    the box mask (tests/quality/toy_cases.replace_cases: objects of at most 24 px, 28 px box)."""
    from toy_cases import replace_cases, verdicts

    from blendedit import BlendedLatentDiffusion

    editor = BlendedLatentDiffusion.from_pretrained(world.sd, clip_model=str(world.clip))
    judge = world.classifier()
    rows: dict[str, list[float]] = {
        "text_batch": [],
        "text_top1": [],
        "box_batch": [],
        "box_top1": [],
    }
    for k, case in enumerate(replace_cases(world, n, seed=0)):
        prompt = world.caption(case.target)
        sel = Selection(text=world.caption(case.original))
        text_mask = select_mask(seg, case.image, sel, SelectConfig(mask_fill_holes=True))
        for name, mask, grow in (("text", text_mask, GROW), ("box", case.mask, 0)):
            r = editor(case.image, mask, prompt, seed=100 * k, num_images=8, mask_grow=grow, **EDIT)
            ok = verdicts(judge, [c.image for c in r.candidates], case.box, case.target)
            rows[f"{name}_batch"].append(float(ok.mean()))
            rows[f"{name}_top1"].append(float(ok[0]))
    return rows


def report(ious: dict, edits: dict, seconds: float, n_scenes: int, n_edits: int) -> str:
    m = {k: float(np.mean(v)) for k, v in ious.items()}
    e = {k: float(np.mean(v)) for k, v in edits.items()}
    return f"""# The toy text segmenter, measured

Written by `tools/toy_segmenter_report.py` ({seconds:.0f} s on a 2-core CPU shared with other
jobs, this sandbox). The segmenter: `examples/toy-segmenter/`, a CLIPSeg decoder trained on
`toy-clip` (frozen) by `tools/train_toy_segmenter.py`, loaded with
`blendedit.segment.load_segmenter` like any CLIPSeg folder.

## Text -> mask IoU ({n_scenes} held-out scenes, generator seed 1)

Threshold 0.5 on both the prediction and the generator's exact coverage of every object of the
named class.

| query | n | mean IoU |
|---|---|---|
| main object, "a {{colour}} {{shape}}" | {len(ious["main"])} | {m["main"]:.3f} |
| distractor (6-10 px), its caption | {len(ious["distractor"])} | {m["distractor"]:.3f} |
| control: a class absent from the scene, IoU with the main object | {len(ious["control"])} | {m["control"]:.3f} |

The control's mask covers {100 * m["control_area"]:.2f}% of the photo on average (it should be
empty).

## Edit by text selection vs a hand-made box mask ({n_edits} held-out scenes)

Each scene's object (at most 24 px) is replaced by a random other caption: 8 candidates, 10 DDIM
steps, guidance 5, CLIP-ranked; the toy classifier judges the same square around the object for
both. Text selection: "select: a {{colour}} {{shape}}" naming the object, holes filled, grown by
{GROW} px; box: the 28 px square over it (`tests/quality/toy_cases.py`).

| mask | precision, batch | top-1 (CLIP-ranked) |
|---|---|---|
| text selection | {100 * e["text_batch"]:.1f}% | {100 * e["text_top1"]:.1f}% |
| box mask (control) | {100 * e["box_batch"]:.1f}% | {100 * e["box_top1"]:.1f}% |

With {n_edits} scenes one scene is {100 / n_edits:.1f} points of top-1: read small differences as
noise. `tests/quality/test_toy_segmenter.py` checks a subset of both claims on every run.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--edits", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "docs" / "segment-toyworld.md"))
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    from blendedit.io import write_text

    t0 = time.perf_counter()
    world = World()
    data = import_world(world.root, "data")
    seg = load_segmenter(str(SEGMENTER))
    ious = mask_ious(seg, data, a.scenes)
    print({k: round(float(np.mean(v)), 3) for k, v in ious.items()}, flush=True)
    edits = edit_precision(seg, world, a.edits)
    print({k: round(float(np.mean(v)), 3) for k, v in edits.items()}, flush=True)
    text = report(ious, edits, time.perf_counter() - t0, a.scenes, a.edits)
    write_text(text, Path(a.out), replace=True)  # the report this script owns


if __name__ == "__main__":
    main()
