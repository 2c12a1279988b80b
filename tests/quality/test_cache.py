"""A step cache at its default keeps the edit's quality (issue 24): DeepCache (interval 3) on the
toy world's UNet follows the prompt as the uncached run does, far above the guidance-0 control,
with the same background PSNR and seam score; each transformer cache (First Block Cache,
TaylorSeer, Pyramid Attention Broadcast, MagCache) at its default on the toy FLUX.1 transformer
(``examples/toy-flux``) stays within a stated tolerance of the uncached run on the same seeds,
and a cache that skips nearly every call does not. The full measurement (more scenes, every
setting, where each breaks, the few-step regime) is tools/cache_quality.py, in docs/quality.md.

A small subset: 5 scenes, 8 candidates, 20 steps (15 calls, 10 of them skipped by DeepCache);
the transformer caches: 3 scenes, 4 candidates, 12 steps (9 calls).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from toy_cases import replace_cases, say, verdicts

from blendedit.eval.metrics import images_to_tensor

TOY_FLUX = Path(__file__).resolve().parents[2] / "examples" / "toy-flux"

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


# -- the transformer caches on the toy FLUX.1 (examples/toy-flux) ------------------------------

FLUX_RUN = {"num_inference_steps": 12, "num_images": 4, "size": 64, "background": "decoded"}
FLUX_SCENES = 3
# Tolerances (docs/quality.md): inside the mask the cached candidates differ from the uncached
# ones on the same seeds by at most MAX_CHANGE of the change a different seed makes (measured
# here: TaylorSeer 0.49, PAB 0.62, MagCache 0.64, FasterCache 0.09, First Block Cache skips none at its default so
# 0; a cache skipping all but the first call 1.32); background PSNR within 1 dB, seam within 0.01, colour precision within
# 0.25 (12 predictions: 3 of them).
MAX_CHANGE = 0.85
ABSURD = "first-block:1e9"  # the control: every call after the first skips the deep blocks


def _flux_run(editor, judge, toyworld, cache: str, seed_offset: int = 0) -> dict:
    """Candidates (N, 64, 64, 3) in [0, 1], colour precision (the toy FLUX follows the prompt's
    colour, its shape a little: docs/quality.md), background PSNR, seam, skipped calls."""
    images, ok, psnr, seam, skipped = [], [], [], [], 0
    for k, case in enumerate(replace_cases(toyworld, FLUX_SCENES, seed=5)):
        r = editor(
            case.image, case.mask, toyworld.caption(case.target), seed=70 * k + seed_offset,
            cache=cache, **FLUX_RUN,
        )  # fmt: skip
        pics = [c.image for c in r.candidates]
        x = images_to_tensor([im.convert("RGB") for im in pics])
        pred = judge.classify(x, torch.tensor([case.box] * len(pics)))
        ok.append(float((pred // 5 == case.target // 5).float().mean()))  # the prompt's colour
        images.append(np.stack([np.asarray(p.convert("RGB"), float) / 255 for p in pics]))
        psnr.append(r.best.metrics["background_psnr"])
        seam.append(r.best.metrics["seam"])
        skipped += r.settings["cache_skipped"]
    masks = [c.mask > 127 for c in replace_cases(toyworld, FLUX_SCENES, seed=5)]
    return {
        "images": images, "masks": masks, "batch": float(np.mean(ok)),
        "psnr": float(np.mean(psnr)), "seam": float(np.mean(seam)), "skipped": skipped,
    }  # fmt: skip


def _change(a: dict, b: dict) -> float:
    """Mean absolute difference of the candidates inside the masks."""
    return float(
        np.mean(
            [
                np.abs(x - y)[:, m].mean()
                for x, y, m in zip(a["images"], b["images"], a["masks"], strict=True)
            ]
        )
    )


@pytest.fixture(scope="module")
def flux_measured(toyworld, toy_judge):
    """Per setting the runs of :func:`_flux_run`; "reseeded": uncached on other seeds."""
    if not (TOY_FLUX / "model_index.json").is_file():
        pytest.skip(f"no toy FLUX folder at {TOY_FLUX} (tools/train_toy_transformer.py)")
    from blendedit import BlendedLatentDiffusion

    editor = BlendedLatentDiffusion.from_pretrained(TOY_FLUX, clip_model=str(toyworld.clip))
    out = {c: _flux_run(editor, toy_judge, toyworld, c) for c in ("none", *FLUX_CACHES, ABSURD)}
    out["reseeded"] = _flux_run(editor, toy_judge, toyworld, "none", seed_offset=1)
    return out


FLUX_CACHES = ("first-block", "taylorseer", "pab", "magcache", "fastercache")


def _within(run: dict, none: dict, noise: float) -> tuple[bool, str]:
    change = _change(run, none)
    msg = say(
        "cached vs uncached (change inside the mask / a new seed's, colour, PSNR, seam)",
        change=change / noise, colour=run["batch"], uncached_colour=none["batch"], psnr=run["psnr"],
        uncached_psnr=none["psnr"], seam=run["seam"], uncached_seam=none["seam"],
        skipped=run["skipped"],
    )  # fmt: skip
    ok = (
        change <= MAX_CHANGE * noise and abs(run["batch"] - none["batch"]) <= 0.25
        and abs(run["psnr"] - none["psnr"]) <= 1.0 and abs(run["seam"] - none["seam"]) <= 0.01
    )  # fmt: skip
    return ok, msg


@pytest.mark.slow
@pytest.mark.parametrize("cache", FLUX_CACHES)
def test_transformer_cache_default_within_tolerance_of_uncached(flux_measured, cache):
    """Each default skips calls and stays within tolerance. Fails when the cache is wrong: the
    control below (a cache skipping all but the first call) is measured by the same rule."""
    none = flux_measured["none"]
    noise = _change(flux_measured["reseeded"], none)
    ok, msg = _within(flux_measured[cache], none, noise)
    run = flux_measured[cache]
    assert run["skipped"] > 0 or _change(run, none) == 0.0, msg  # no skip: bit-identical
    assert ok, msg


@pytest.mark.slow
def test_transformer_cache_tolerance_fails_a_cache_that_skips_everything(flux_measured):
    none = flux_measured["none"]
    noise = _change(flux_measured["reseeded"], none)
    absurd = flux_measured[ABSURD]
    ok, msg = _within(absurd, none, noise)
    assert absurd["skipped"] == FLUX_SCENES * 8, msg  # 9 calls per edit, all but the first
    assert not ok, msg
