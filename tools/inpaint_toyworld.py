"""The toy world's three-way measurement of issue 19: BLD on the plain toy model (``toy-sd``)
against the model trained for inpainting (``toy-sd-inpaint``, 9 channels) alone (``--blend off``)
and with the paper's blend on top (``--blend on``), for replacing an object and removing it.

Usage (from the repository root; 21 min on this sandbox's 2 CPU cores, shared with other work)::

    PYTHONPATH=src python tools/inpaint_toyworld.py [--cases 24] [--candidates 6] [--steps 20]
        [--world ../shared/toyworld] [--out docs/eval-toyworld/inpaint]

Writes ``OUT.json`` (every number) and ``OUT.md`` (the tables). Cases: the first held-out scenes
(generator seed 1) with an object of at most 24 px, a 28x28 mask over it and a random other
caption (``tests/quality/toy_cases.py``'s rule, seed 0). Per case and method:

- replace: the other caption, ``--candidates`` candidates ranked by the toy CLIP; the toy
  classifier judges the masked square: precision of the batch, top-1 (CLIP-ranked first);
  background PSNR of the raw decode outside the mask (before the frame pastes the source back);
  seam score of the written result (``frame.metrics.seam_score``);
- its control: the same caption at guidance 0 (the empty prompt's prediction alone);
- removal: the empty prompt; the share of candidates in which the classifier still finds the
  original object (lower is better); its control: the object's own caption.

Each method runs at its own defaults: BLD at blend start 0.25 (15 of 20 steps), the inpainting
model from pure noise (blend start 0, its pipeline's full strength); all at guidance 5, DDIM,
``--size 64``, the mask binary, the background stitched. One thread (``--threads``): on a shared
machine two OpenMP threads spin and run slower.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "quality"))

METHODS = {  # name -> (model folder, settings)
    "bld (toy-sd)": ("toy-sd", {"blend_start": 0.25}),
    "inpaint model alone": ("toy-sd-inpaint", {"blend_start": 0.0, "blend": "off"}),
    "inpaint model + blend": ("toy-sd-inpaint", {"blend_start": 0.0, "blend": "on"}),
}


def measure_case(editor, judge, world, case, k: int, run: dict) -> dict[str, float]:
    """The replace, control, removal and removal-control numbers of one case."""
    from toy_cases import verdicts

    from blendedit.frame.metrics import masked_psnr, seam_score

    target = world.caption(case.target)
    rep = editor(case.image, case.mask, target, seed=k, **run)
    ctl = editor(case.image, case.mask, target, seed=k, **{**run, "guidance_scale": 0.0})
    rem = editor(case.image, case.mask, "", seed=k, **run)
    own = editor(case.image, case.mask, world.caption(case.original), seed=k, **run)
    hit = verdicts(judge, [c.image for c in rep.candidates], case.box, case.target)
    hit_c = verdicts(judge, [c.image for c in ctl.candidates], case.box, case.target)
    src = np.asarray(case.image, np.float32) / 255
    outside = (case.mask < 128).astype(np.float32)
    inside = 1 - outside
    x0, y0, x1, y1 = rep.candidates[0].box  # the raw decode covers the crop region only
    psnr = [
        float(
            masked_psnr(
                np.asarray(c.decoded, np.float32) / 255, src[y0:y1, x0:x1], outside[y0:y1, x0:x1]
            )
        )
        for c in rep.candidates
    ]
    seam = [
        float(seam_score(np.asarray(c.image, np.float32) / 255, src, inside))
        for c in rep.candidates
    ]
    return {
        "precision": float(hit.mean()),
        "top1": float(hit[0]),
        "precision_control": float(hit_c.mean()),
        "top1_control": float(hit_c[0]),
        "raw_psnr": float(np.mean(psnr)),
        "seam": float(np.mean(seam)),
        "removal_found": float(
            verdicts(judge, [c.image for c in rem.candidates], case.box, case.original).mean()
        ),
        "removal_control_found": float(
            verdicts(judge, [c.image for c in own.candidates], case.box, case.original).mean()
        ),
    }


def table(results: dict[str, dict[str, float]], args: argparse.Namespace, seconds: float) -> str:
    head = (
        "| method | precision, batch | top-1 | control: batch / top-1 | removal: object still "
        "found | control (own caption) | raw decode PSNR outside (dB) | seam |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    rows = "".join(
        f"| {m} | {r['precision']:.1%} | {r['top1']:.1%} | {r['precision_control']:.1%} / "
        f"{r['top1_control']:.1%} | {r['removal_found']:.1%} | {r['removal_control_found']:.1%} | "
        f"{r['raw_psnr']:.1f} | {r['seam']:.4f} |\n"
        for m, r in results.items()
    )
    setup = (
        f"{args.cases} held-out scenes, {args.candidates} candidates each, {args.steps} DDIM steps, "
        f"guidance 5, --size 64; {seconds / 60:.0f} min on a 2-core CPU (this sandbox, shared)."
    )
    title = (
        "# Toy world: BLD against a model trained for inpainting\n\n"
        "Written by `tools/inpaint_toyworld.py` (its docstring describes the cases, the runs and "
        "the metrics); read [models made for inpainting](../inpainting.md) for what it means.\n\n"
    )
    return title + head + rows + "\n" + setup + "\n"


def main(argv: list[str] | None = None) -> int:
    torch.set_flush_denormal(True)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--candidates", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--world", default=str(REPO.parent / "shared" / "toyworld"))
    ap.add_argument("--out", default=str(REPO / "docs" / "eval-toyworld" / "inpaint"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    from toy_cases import replace_cases

    from blendedit import BlendedLatentDiffusion
    from blendedit.eval.toyworld import World
    from blendedit.io import write_atomic

    world = World(args.world)
    judge = world.classifier()
    cases = replace_cases(world, args.cases, seed=0)
    base = {"num_images": args.candidates, "num_inference_steps": args.steps, "guidance_scale": 5.0}
    base |= {"size": 64, "metrics": False, "background": "stitch"}
    editors = {
        folder: BlendedLatentDiffusion.from_pretrained(
            world.root / folder, clip_model=str(world.clip)
        )
        for folder in {f for f, _ in METHODS.values()}
    }
    per_case: dict[str, list[dict[str, float]]] = {name: [] for name in METHODS}
    t0 = time.time()
    for k, case in enumerate(cases):  # every method on each case in turn: any prefix is a result
        for name, (folder, settings) in METHODS.items():
            row = measure_case(editors[folder], judge, world, case, k, {**base, **settings})
            per_case[name].append(row)
        results = {
            name: {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
            for name, rows in per_case.items()
        }
        done = argparse.Namespace(**{**vars(args), "cases": k + 1})
        text = table(results, done, time.time() - t0)
        report = {"settings": vars(done) | base, "results": results, "per_case": per_case}
        data = json.dumps(report, indent=1).encode()
        write_atomic(out.with_suffix(".json"), lambda f, d=data: f.write(d), replace=True)
        write_atomic(out.with_suffix(".md"), lambda f, t=text: f.write(t.encode()), replace=True)
        print(f"case {k + 1}/{len(cases)} {time.time() - t0:.0f}s", json.dumps(results), flush=True)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
