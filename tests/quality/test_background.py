"""Background reconstruction (BLD paper 4.2, eq. 2 and 3) with a real, lossy VAE: optimising the
latent or fine-tuning the decoder restores the background outside the mask better than the raw
decode, and ``stitch`` keeps the input's own pixels beyond its feather band.

The toy VAE loses detail like SD's does on photos (test PSNR 27.6 dB). Measured when the thresholds
were set (75 Adam steps, the paper's settings): this scene decoder 38.2 dB, latent 34.8 dB, raw
decode 26.4 dB; over two scenes 36.4 / 32.6 / 23.7 dB. The margins (3 and 1 dB) are a third of
the smallest measured gap or less.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from toy_cases import replace_cases, say

N_SCENES = 1
RUN = {"num_inference_steps": 10, "guidance_scale": 5.0, "num_images": 1, "rank": False}
MODES = ("decoded", "latent", "decoder", "stitch")


@pytest.fixture(scope="module")
def psnr(toyworld, toy_editor):
    """Mean background PSNR outside the mask per mode, and the stitch results with their inputs."""
    out: dict[str, list[float]] = {m: [] for m in MODES}
    stitched = []
    for k, case in enumerate(replace_cases(toyworld, N_SCENES, seed=1)):
        prompt = toyworld.caption(case.target)
        for mode in MODES:
            r = toy_editor(case.image, case.mask, prompt, seed=k, background=mode, **RUN)
            out[mode].append(r.best.metrics["background_psnr"])
            if mode == "stitch":
                stitched.append((case, np.asarray(r.best.image), r.settings["feather"]))
    return {m: float(np.mean(v)) for m, v in out.items()}, stitched


def test_latent_and_decoder_reconstruction_beat_the_raw_decode(psnr):
    p, _ = psnr
    msg = say(
        "background PSNR outside the mask (dB), reconstruction vs raw decode",
        decoder=p["decoder"],
        latent=p["latent"],
        decoded=p["decoded"],
    )
    assert p["decoder"] >= p["decoded"] + 3.0 and p["latent"] >= p["decoded"] + 1.0, msg


def test_stitch_is_exact_beyond_its_feather_band(psnr):
    p, stitched = psnr
    for case, out, feather in stitched:
        src = np.asarray(case.image)
        band = cv2.dilate(case.mask, np.ones((2 * feather + 3,) * 2, np.uint8)) > 0
        changed = (out != src).any(-1)
        msg = say(
            "stitch: pixels changed beyond the feather band",
            changed=int(changed[~band].sum()),
            inside_band=int(changed[band].sum()),
            stitch_psnr=p["stitch"],
        )
        assert not changed[~band].any() and changed[band].any(), msg
