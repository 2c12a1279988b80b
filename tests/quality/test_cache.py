"""A step cache at its default keeps the edit's quality (issue 24): DeepCache (interval 3) on the
toy world's UNet follows the prompt as the uncached run does, far above the guidance-0 control,
with the same background PSNR and seam score. The full measurement (more scenes, every interval,
the interval where it breaks, the few-step regime) is tools/cache_quality.py, in docs/quality.md.

A small subset: 5 scenes, 8 candidates, 20 steps (15 calls, 10 of them skipped by DeepCache).
"""

from __future__ import annotations

import numpy as np
import pytest
from toy_cases import replace_cases, say, verdicts

N_SCENES = 5
RUN = {"num_inference_steps": 20, "guidance_scale": 5.0, "background": "decoded"}


@pytest.fixture(scope="module")
def measured(toyworld, toy_editor, toy_judge):
    """Per setting: mean batch precision, top-1, background PSNR, seam score; skipped calls;
    the per-scene rows."""
    out = {}
    for name, extra in (
        ("none", {}),
        ("deepcache", {"cache": "deepcache"}),
        ("control", {"guidance_scale": 0.0, "num_images": 4}),
    ):
        rows, skipped = [], 0
        for k, case in enumerate(replace_cases(toyworld, N_SCENES, seed=3)):
            r = toy_editor(
                case.image, case.mask, toyworld.caption(case.target), seed=50 * k,
                **{**RUN, "num_images": 8, **extra},
            )  # fmt: skip
            ok = verdicts(toy_judge, [c.image for c in r.candidates], case.box, case.target)
            m = r.best.metrics
            rows.append((ok.mean(), ok[0], m["background_psnr"], m["seam"]))
            skipped += r.settings["cache_skipped"]
        out[name] = (*np.array(rows, float).mean(0), skipped, np.array(rows, float))
    return out


def _within_noise(a: np.ndarray, b: np.ndarray, floor: float) -> tuple[float, float]:
    """Paired per-scene difference a - b: its mean and the noise bound, 2 standard errors (at
    least ``floor``)."""
    d = a - b
    return float(d.mean()), max(floor, 2 * float(d.std(ddof=1)) / np.sqrt(len(d)))


@pytest.mark.slow
def test_deepcache_keeps_prompt_following_background_and_seam(measured):
    none, cached, control = measured["none"], measured["deepcache"], measured["control"]
    msg = say(
        "deepcache vs uncached vs control (batch, top-1, background PSNR, seam)",
        batch=cached[0], uncached_batch=none[0], control_batch=control[0], top1=cached[1],
        uncached_top1=none[1], psnr=cached[2], uncached_psnr=none[2], seam=cached[3],
        uncached_seam=none[3], skipped=cached[4],
    )  # fmt: skip
    assert cached[4] == N_SCENES * 10, msg  # 15 calls per edit: 0, 3, 6, 9, 12 in full
    assert cached[0] >= none[0] - 0.15 and cached[0] - control[0] >= 0.2, msg
    psnr_diff, psnr_noise = _within_noise(cached[5][:, 2], none[5][:, 2], 0.5)
    seam_diff, seam_noise = _within_noise(cached[5][:, 3], none[5][:, 3], 0.005)
    msg += f"; psnr diff {psnr_diff:.2f} (noise {psnr_noise:.2f}), seam diff {seam_diff:.4f}"
    msg += f" (noise {seam_noise:.4f})"
    assert abs(psnr_diff) <= psnr_noise and seam_diff <= seam_noise, msg
