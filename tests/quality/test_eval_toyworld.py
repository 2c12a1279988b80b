"""``blendedit eval`` with the toy world's classifier: its 30 captions are the prompt classes, and a
prediction is correct when shape and colour in the square around the rectangle are the prompt's."""

from __future__ import annotations

import json

import numpy as np
import torch

from blendedit.eval import EvalModels, EvalSettings, evaluate_case, run_eval
from blendedit.eval.methods import Resources
from blendedit.eval.metrics import MetricModels, classifier_top_k, load_classifier
from blendedit.eval.protocol import make_cases
from blendedit.eval.toyworld import ToyClassifier, centred_box, mask_square, write_scenes


def test_toy_classifier_known_answers(toyworld):
    """Untouched scenes: the object's own class is found in the square around a mask over it,
    any other class is not; the square is the mask's bounding square (at least 16 px)."""
    clf = load_classifier(toyworld.classifier_file)
    assert isinstance(clf, ToyClassifier) and clf.top_k == 1 == classifier_top_k(clf.name)
    assert clf.id2label[0] == "a red circle" and len(clf.id2label) == 30
    models = MetricModels(clf, top_k=clf.top_k)
    own, other = [], []
    for i in range(20):
        image, labels = toyworld.scene(i)
        x0, y0, x1, y1 = centred_box(labels, 28)
        mask = np.zeros((64, 64), bool)
        mask[y0 + 2 : y1 - 2, x0 : x1 - 3] = True  # not square: the judge squares it
        sx0, sy0, sx1, sy1 = mask_square(mask)  # 25 x 24 mask -> a 25 px square around it
        assert sx1 - sx0 == sy1 - sy0 == 25 and sx0 <= x0 and sx1 >= x1 - 3
        assert sy0 <= y0 + 2 and sy1 >= y1 - 2
        cls = toyworld.class_of(labels)
        own.append(evaluate_case([image], image, mask, cls, "", models)["top1_correct"])
        other.append(evaluate_case([image], image, mask, (cls + 7) % 30, "", models)["n_correct"])
    assert np.mean(own) >= 0.95 and sum(other) == 0


def test_eval_runs_the_protocol_with_the_toy_classifier(toyworld, tmp_path):
    scenes = write_scenes(tmp_path / "scenes", 3)
    assert [p.name for p in scenes] == ["scene-0000.png", "scene-0001.png", "scene-0002.png"]
    models = EvalModels(
        sd_model=str(toyworld.sd),
        clip_model=str(toyworld.clip),
        score_clip_model=None,
        classifier=str(toyworld.classifier_file),
        device="cpu",
        dtype="fp32",
    )
    res = Resources(models)
    assert res.labels == dict(enumerate(toyworld.data.CAPTIONS))
    cases = make_cases(tmp_path / "scenes", 3, 0, res.labels)
    assert all(c.prompt in toyworld.data.CAPTIONS for c in cases)
    settings = EvalSettings(
        methods=("latent",),
        n_images=2,
        batch=2,
        latent=EvalSettings().latent.replace(num_inference_steps=4, size=64),
        time_single=False,
        warmup=False,
        progress=False,
    )
    report = run_eval(tmp_path / "scenes", tmp_path / "run", settings, models, resources=res)
    assert report["metrics"]["top_k"] == 1
    assert "shape and colour" in report["protocol"]["precision"]
    r = report["methods"]["latent"]["results"]
    assert r["precision_first"] is not None and 0 <= r["precision_first"] <= 1
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Precision (first, unranked)" in md and "shape and colour" in md
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["methods"]["latent"]["per_input"][0]["first_correct"] in (True, False)
    # The judge classifies the square around the rectangle, not a masked image.
    case = cases[0]
    box = torch.tensor([mask_square(case.mask())])
    assert box[0, 2] - box[0, 0] == box[0, 3] - box[0, 1] >= 16
