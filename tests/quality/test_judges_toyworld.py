"""The toy world's realism judge and what an ensemble ranking changes (issue 22). The full
measurement: tools/toy_rank_compare.py -> docs/eval-toyworld/judges.md; here small subsets that
still compare against a control."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_cases import say

from blendedit.eval.toy_realism import ToyRealismJudge, ToyRealismNet, composite

REPO = Path(__file__).resolve().parents[2]
REALISM = REPO / "tools" / "toy_realism.safetensors"


def _accuracy(judge: ToyRealismJudge, real: np.ndarray, fake: np.ndarray) -> float:
    def x(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, 64, 64)

    ones = torch.ones(1, 1, 64, 64)
    hits = (judge.score(x(real), ones, "") > 0).float().mean()
    rejects = (judge.score(x(fake), ones, "") <= 0).float().mean()
    return float(hits + rejects) / 2


def test_realism_judge_tells_real_scenes_from_composites(toyworld) -> None:
    """Held-out scenes (seed 1) against composites of them (seams, colour shifts, blur, noise
    in a box): the trained judge well above the control, the same net untrained (chance)."""
    real = np.stack([toyworld.data.sample(1, 5000 + i)[0] for i in range(96)])
    rng = np.random.default_rng(7)
    fake = np.stack([composite(real[i], real[(i + 1) % 96], rng) for i in range(96)])
    trained = _accuracy(ToyRealismJudge.from_file(REALISM), real, fake)
    torch.manual_seed(0)
    control = _accuracy(ToyRealismJudge(ToyRealismNet()), real, fake)
    msg = say("realism judge: accuracy real vs composite", trained=trained, untrained=control)
    assert trained >= 0.65 and trained >= control + 0.15, msg  # measured 0.724 against 0.500


@pytest.mark.slow
def test_ensemble_top1_against_clip_top1(toyworld, toy_editor, toy_judge) -> None:
    """A few cases of tools/toy_rank_compare.py: the ensemble (clip=1, realism=1) picks a top-1
    with a lower seam score and a higher PSNR outside the mask than CLIP's top-1 (the control).
    Precision is printed, not held: the full run (docs/eval-toyworld/judges.md) has it within
    one case of CLIP's (60% against 65%), a few cases here swing it by whole cases."""
    sys.path.insert(0, str(REPO / "tools"))
    from toy_cases import replace_cases
    from toy_rank_compare import RUN, case_rows, compare

    realism = ToyRealismJudge.from_file(REALISM)
    run = {**RUN, "num_inference_steps": 10}
    rows = [
        case_rows(toy_editor, realism, toy_judge, toyworld.caption(c.target), c, 4, run)
        for c in replace_cases(toyworld, 6)
    ]
    s = compare(rows)
    c, e = s["clip"], s["ensemble"]
    msg = say("top-1 seam, background PSNR, precision", clip_seam=c["seam"],
              ensemble_seam=e["seam"], clip_psnr=c["bg_psnr"], ensemble_psnr=e["bg_psnr"],
              clip_precision=c["correct"], ensemble_precision=e["correct"])  # fmt: skip
    assert e["seam"] < c["seam"] and e["bg_psnr"] > c["bg_psnr"], msg
