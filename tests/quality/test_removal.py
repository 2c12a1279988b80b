"""Removal with the empty prompt: the masked object is replaced by what its surroundings suggest,
so the classifier no longer finds it; the control edits the same region with the object's own
caption, which keeps it. Measured when the thresholds were set: the input 100%, after the empty
prompt 9.4%, after the own caption 75% (8 scenes x 4 candidates, 10 steps).
"""

from __future__ import annotations

import numpy as np
import pytest
from toy_cases import replace_cases, say, verdicts

N_SCENES, N_CANDIDATES = 8, 4
RUN = {"num_inference_steps": 10, "guidance_scale": 5.0, "metrics": False}


@pytest.fixture(scope="module")
def found(toyworld, toy_editor, toy_judge):
    """How often the classifier finds the original object: in the input, after an empty-prompt
    edit, after an edit with the object's own caption (the control)."""
    rows = []
    for k, case in enumerate(replace_cases(toyworld, N_SCENES, seed=2)):
        before = verdicts(toy_judge, [case.image], case.box, case.original)[0]
        removed = toy_editor(case.image, case.mask, "", seed=k, num_images=N_CANDIDATES, **RUN)
        kept = toy_editor(
            case.image, case.mask, toyworld.caption(case.original), seed=k,
            num_images=N_CANDIDATES, **RUN,
        )  # fmt: skip
        rows.append(
            (
                before,
                verdicts(
                    toy_judge, [c.image for c in removed.candidates], case.box, case.original
                ).mean(),
                verdicts(
                    toy_judge, [c.image for c in kept.candidates], case.box, case.original
                ).mean(),
            )
        )
    return np.array(rows, dtype=float).mean(0)


def test_empty_prompt_removes_the_object(found):
    before, removed, kept = found
    msg = say(
        "object found by the classifier: input, after empty-prompt edit, after own-caption edit",
        input=before,
        removed=removed,
        own_caption_control=kept,
    )
    assert before == 1.0 and removed <= REMOVED_MAX and kept >= removed + 0.3, msg


REMOVED_MAX = 0.25
