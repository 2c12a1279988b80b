"""The toy model trained for inpainting (``toy-sd-inpaint``, 9 channels) in the frame: it follows
the prompt against its guidance-0 control, removes the object with the empty prompt against its
own-caption control, and the blend (``--blend on``) keeps the raw decode's background closer to
the photo than the model alone. A small subset of ``tools/inpaint_toyworld.py`` (the full
three-way table with BLD is in docs/eval-toyworld/inpaint.md)."""

from __future__ import annotations

import numpy as np
import pytest
from toy_cases import replace_cases, say, verdicts

from blendedit.frame.metrics import masked_psnr

N_SCENES, N_CANDIDATES = 4, 4
RUN = {"num_inference_steps": 10, "guidance_scale": 5.0, "metrics": False, "size": 64}
RUN |= {"num_images": N_CANDIDATES, "blend_start": 0.0}

pytestmark = pytest.mark.slow


def _raw_psnr(result, case) -> float:
    """Mean PSNR of the raw decodes (before paste-back) against the photo outside the mask."""
    src = np.asarray(case.image, np.float32) / 255
    outside = (case.mask < 128).astype(np.float32)
    x0, y0, x1, y1 = result.candidates[0].box  # the decode covers the crop region
    return float(np.mean([
        float(masked_psnr(np.asarray(c.decoded, np.float32) / 255, src[y0:y1, x0:x1],
                          outside[y0:y1, x0:x1]))
        for c in result.candidates
    ]))  # fmt: skip


def _hit(judge, result, case, cls) -> float:
    return float(verdicts(judge, [c.image for c in result.candidates], case.box, cls).mean())


@pytest.fixture(scope="module")
def numbers(toyworld, toy_judge):
    from blendedit import BlendedLatentDiffusion

    folder = toyworld.root / "toy-sd-inpaint"
    if not folder.is_dir():
        pytest.skip("toyworld/toy-sd-inpaint is missing")
    editor = BlendedLatentDiffusion.from_pretrained(folder, clip_model=str(toyworld.clip))
    assert editor.backbone.inpainting
    rows = []
    for k, case in enumerate(replace_cases(toyworld, N_SCENES, seed=3)):
        target, own = toyworld.caption(case.target), toyworld.caption(case.original)
        off = editor(case.image, case.mask, target, seed=k, blend="off", **RUN)
        ctl = editor(
            case.image, case.mask, target, seed=k, blend="off", **{**RUN, "guidance_scale": 0}
        )
        rem = editor(case.image, case.mask, "", seed=k, blend="off", **RUN)
        kept = editor(case.image, case.mask, own, seed=k, blend="off", **RUN)
        on = editor(case.image, case.mask, target, seed=k, blend="on", **RUN)
        rows.append([
            _hit(toy_judge, off, case, case.target), _hit(toy_judge, ctl, case, case.target),
            _hit(toy_judge, rem, case, case.original), _hit(toy_judge, kept, case, case.original),
            _raw_psnr(off, case), _raw_psnr(on, case),
        ])  # fmt: skip
    return np.array(rows, dtype=float).mean(0)


def test_inpainting_model_follows_the_prompt(numbers):
    prompt, control = numbers[:2]
    msg = say(
        "inpaint model: target found, prompt vs guidance-0 control", prompt=prompt, control=control
    )
    assert prompt >= control + 0.3, msg


def test_inpainting_model_removes_with_the_empty_prompt(numbers):
    removed, kept = numbers[2:4]
    msg = say("inpaint model: original found, empty prompt vs own caption", empty=removed, own=kept)
    assert removed <= 0.25 and kept >= removed + 0.3, msg


def test_the_blend_keeps_the_raw_background(numbers):
    alone, blended = numbers[4:6]
    msg = say("raw decode PSNR outside the mask (dB)", alone=alone, blend=blended)
    assert blended >= alone + 2.0, msg
