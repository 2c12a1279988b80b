"""The paper's quantitative evaluation (BLD paper 5 and C.1; SPEC 3) as a library and as
``blendedit eval``: the same random inputs for every method, precision, diversity, background
fidelity, CLIP score and time, cached and resumable, with a report people read.

    from blendedit.eval import EvalModels, EvalSettings, run_eval
    report = run_eval("photos/", "eval-run", EvalSettings(methods=("latent", "diffusers-inpaint")))
"""

from __future__ import annotations

from blendedit.eval.methods import DEFAULT_METHODS, METHODS, EvalModels, MethodSpec, Resources
from blendedit.eval.metrics import (
    DEFAULT_CLASSIFIER,
    DEFAULT_SCORE_CLIP_MODEL,
    ImageNetClassifier,
    MetricModels,
    background_scores,
    clip_score_from_embeddings,
    clip_scores,
    diversity,
    evaluate_case,
    pairwise_lpips,
    precision_top_k,
)
from blendedit.eval.protocol import EvalCase, make_cases
from blendedit.eval.report import render_markdown, without_timings
from blendedit.eval.runner import EvalSettings, run_eval

__all__ = [
    "DEFAULT_CLASSIFIER",
    "DEFAULT_METHODS",
    "DEFAULT_SCORE_CLIP_MODEL",
    "METHODS",
    "EvalCase",
    "EvalModels",
    "EvalSettings",
    "ImageNetClassifier",
    "MethodSpec",
    "MetricModels",
    "Resources",
    "background_scores",
    "clip_score_from_embeddings",
    "clip_scores",
    "diversity",
    "evaluate_case",
    "make_cases",
    "pairwise_lpips",
    "precision_top_k",
    "render_markdown",
    "run_eval",
    "without_timings",
]
