"""Measure the defaults the toy world can speak to (../shared/toyworld): the number of steps, the
stitch feather, the crop context and the width at which progressive shrinking stops helping.

    python examples/toyworld_defaults.py > defaults.md     # about 3 CPU-minutes

Each number is a mean over the same held-out scenes and seeds (8 scenes x 4 candidates), judged
by the toy classifier in the 28 px box (precision) and by blendedit's own metrics (seam score:
gradient energy of the result-minus-input difference in a band around the mask border; lower is
a smoother transition).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blendedit import BlendedLatentDiffusion
from blendedit.eval.metrics import images_to_tensor
from blendedit.eval.toyworld import World

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "quality"))
from test_shrinking import stroke
from toy_cases import replace_cases, verdicts

N, K = 8, 4
BASE = {"num_inference_steps": 10, "guidance_scale": 5.0, "num_images": K}


def table(title: str, head: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="steps,fewstep,feather,context,shrink")
    sections = set(ap.parse_args().sections.split(","))
    torch.set_num_threads(1)
    world = World()
    editor = BlendedLatentDiffusion.from_pretrained(world.sd, clip_model=str(world.clip))
    judge = world.classifier()
    cases = replace_cases(world, N, seed=5)
    t0 = time.time()

    def run(case, **kw):
        r = editor(
            case.image, case.mask, world.caption(case.target), seed=case.index, **{**BASE, **kw}
        )
        ok = verdicts(judge, [c.image for c in r.candidates], case.box, case.target)
        seam = np.mean([c.metrics["seam"] for c in r.candidates])
        return ok.mean(), ok[0], seam

    # 1. Steps: precision (batch, top-1) and seam against the schedule length.
    if "steps" in sections:
        rows = []
        for steps in (4, 6, 10, 20, 50):
            m = np.mean([run(c, num_inference_steps=steps) for c in cases], axis=0)
            run_steps = steps - int(steps * 0.25)
            rows.append(
                [
                    str(steps),
                    str(run_steps),
                    f"{100 * m[0]:.1f}%",
                    f"{100 * m[1]:.0f}%",
                    f"{m[2]:.4f}",
                ]
            )
        table(
            "Steps (DDIM, blend start 0.25)",
            ["steps", "run", "precision batch", "top-1", "seam"],
            rows,
        )

    # 1b. Few steps: the smallest step count that still blends (1 step = a latent paste).
    if "fewstep" in sections:
        rows = []
        for steps in (1, 2, 3, 4, 6, 8):  # trailing: even one step starts from t = 999
            m = np.mean(
                [run(c, num_inference_steps=steps, scheduler="euler-trailing") for c in cases],
                axis=0,
            )
            run_steps = steps - int(steps * 0.25)
            rows.append(
                [str(steps), str(run_steps), f"{100 * m[0]:.1f}%", f"{100 * m[1]:.0f}%",
                 f"{m[2]:.4f}"]
            )  # fmt: skip
        table(
            "Few steps (trailing Euler as the realtime presets, blend start 0.25; one step run = "
            "the latent paste)",
            ["steps", "run", "precision batch", "top-1", "seam"],
            rows,
        )

    # 2. Feather of the stitched background: seam score and PSNR outside the mask.
    if "feather" in sections:
        rows = []
        for feather in (0, 2, 4, 8, 16):
            seams, psnrs = [], []
            for c in cases:
                r = editor(
                    c.image,
                    c.mask,
                    world.caption(c.target),
                    seed=c.index,
                    **{**BASE, "num_images": 1, "feather": feather},
                )
                seams.append(r.best.metrics["seam"])
                psnrs.append(r.best.metrics["background_psnr"])
            rows.append([str(feather), f"{np.mean(seams):.4f}", f"{np.mean(psnrs):.2f}"])
        table("Feather (stitch)", ["feather px", "seam", "background PSNR (dB)"], rows)

    # 3. Crop context: the scene upscaled to 256 px, the 112 px mask edited as a crop at 64 px.
    if "context" in sections:
        rows = []
        for context in (0, 8, 16, 32, 64):
            vals = []
            for c in cases:
                big = c.image.resize((256, 256), Image.Resampling.BICUBIC)
                mask = np.kron(c.mask, np.ones((4, 4), np.uint8))
                r = editor(
                    big,
                    mask,
                    world.caption(c.target),
                    seed=c.index,
                    region="crop",
                    size=64,
                    context=context,
                    **BASE,
                )
                small = [x.image.resize((64, 64), Image.Resampling.LANCZOS) for x in r.candidates]
                vals.append(verdicts(judge, small, c.box, c.target).mean())
            rows.append([str(context), f"{100 * np.mean(vals):.1f}%"])
        table(
            "Crop context (256 px photo, 112 px mask; default: 1/8 of the mask's mean side, >= 16 px)",
            ["context px", "precision batch"],
            rows,
        )

    # 4. Shrinking against the stroke width of a thin mask: ring / cross outlines (the quality
    # test's masks), judged by the prompt's colour in the square around them.
    if "shrink" in sections:
        rng = np.random.default_rng(3)
        thin = []
        for i in range(N):
            image, labels = world.scene(i)
            colour = int(rng.integers(6))
            corners = ((16, 16), (48, 16), (16, 48), (48, 48))
            cx, cy = max(corners, key=lambda q: (q[0] - labels[3]) ** 2 + (q[1] - labels[4]) ** 2)
            thin.append((i, image, cx, cy, colour))
        rows = []
        for width in (2, 3, 4, 6, 8):
            found = {"on": [], "off": []}
            applied = []
            for i, image, cx, cy, colour in thin:
                box = (cx - 14, cy - 14, cx + 14, cy + 14)
                for kind, shape in (("ring", 4), ("cross", 3)):
                    mask = stroke(kind, cx, cy, width)
                    target = int(world.data.class_id(shape, colour))
                    for mode in found:
                        r = editor(
                            image, mask, world.caption(target), seed=i, mask_shrink=mode, **BASE
                        )
                        x = images_to_tensor([c.image for c in r.candidates])
                        named = judge.classify(x, torch.tensor([box] * len(x)))
                        found[mode].append(float((named // 5 == colour).float().mean()))
                    probe = editor(image, mask, "", num_images=1, num_inference_steps=1)
                    applied.append(bool(probe.settings["shrink_applied"]))
            rows.append([
                str(width), f"{100 * np.mean(found['on']):.1f}%",
                f"{100 * np.mean(found['off']):.1f}%", f"{sum(applied)}/{len(applied)}",
            ])  # fmt: skip
        table(
            "Shrinking against a thin mask's stroke width (ring and cross outlines, 22 px across;"
            " the prompt's colour found in the square)",
            ["stroke px", "shrink on", "shrink off", "auto shrinks"],
            rows,
        )
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
