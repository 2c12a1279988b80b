"""``blendedit batch --judge-model``: the judges' models reach the workers (issue 22)."""

from __future__ import annotations

import json

import pytest
from batch_fixtures import FAST

from blendedit.batch import Shared, run_batch
from blendedit.batch.worker import EditorCache
from blendedit.cli import main
from blendedit.errors import InputError
from blendedit.frame.judges import Judges


def test_local_workers_rank_with_the_given_judge_model(tmp_path, shared_images, tiny_sd_dir,
                                                       tiny_clip_dir, monkeypatch):  # fmt: skip
    asked: list[str] = []

    def get(self, name, device, clip=None):  # records the model, loads nothing
        asked.append(self.models[name])
        raise RuntimeError(f"not loaded: {self.models[name]}")

    monkeypatch.setattr(Judges, "get", get)
    row = {"image": str(shared_images / "chelsea.png"), "prompt": "sunglasses",
           "mask": str(shared_images / "chelsea.mask-eyes.png"), "ranker": "pickscore"}  # fmt: skip
    manifest = tmp_path / "edits.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    shared = Shared(model=str(tiny_sd_dir), clip_model=str(tiny_clip_dir), settings=dict(FAST))
    summary = run_batch(manifest, tmp_path / "out", shared=shared, device="cpu", progress=False,
                        judge_models=["pickscore=my/pickscore"])  # fmt: skip
    assert asked == ["my/pickscore"]
    assert "not loaded: my/pickscore" in summary["entries"][0]["error"]


def test_a_bad_judge_model_is_one_line_before_any_work(tmp_path, capsys):
    with pytest.raises(InputError, match="judge-model: 'nope=x'"):
        EditorCache("cpu", judge_models=("nope=x",))
    rc = main(["batch", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "out"),
               "--judge-model", "nope=x"])  # fmt: skip
    assert rc != 0 and "judge-model: 'nope=x'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
