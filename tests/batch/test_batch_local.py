"""``blendedit batch`` with the local engine: manifest checks, one folder per row written once,
bad rows recorded while the run goes on, resume, refused stale folders, out-of-memory halving."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from batch_fixtures import BAD, FAST, GOOD, pixels, row_folders, write_manifest

from blendedit.batch import BatchStore, Shared, read_manifest, run_batch
from blendedit.cli import main
from blendedit.config import EditConfig
from blendedit.errors import InputError


@pytest.fixture()
def shared(tiny_sd_dir, tiny_clip_dir) -> Shared:
    return Shared(model=str(tiny_sd_dir), clip_model=str(tiny_clip_dir), settings=dict(FAST))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, shared_images, tiny_sd_dir, tiny_clip_dir):
    """One local run of the 12-row manifest (shared by the tests that only read it)."""
    root = tmp_path_factory.mktemp("batch")
    manifest = write_manifest(root / "in", shared_images)
    shared = Shared(model=str(tiny_sd_dir), clip_model=str(tiny_clip_dir), settings=dict(FAST))
    had_ray = "ray" in sys.modules
    summary = run_batch(manifest, root / "out", shared=shared, device="cpu", progress=False)
    return manifest, root / "out", summary, shared, had_ray


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines()]


def test_local_run_writes_every_good_row_once_and_reports_the_bad_ones(local_run):
    manifest, out, summary, *_ = local_run
    rows = read_manifest(manifest, local_run[3])
    folders = row_folders(out)
    assert summary["rows"] == GOOD + BAD == len(rows)
    assert (summary["done"], summary["failed"], summary["pending"]) == (GOOD, BAD, 0)
    assert len(folders) == GOOD == summary["last_run"]["done"]
    # The summary is rebuilt from the folders: every done entry names an existing folder.
    assert {e["folder"] for e in summary["entries"] if e["status"] == "done"} == set(folders)
    errors = {e["row"]: e["error"] for e in summary["entries"] if e["status"] == "failed"}
    assert errors[4].startswith("image: no such file") and "missing.png" in errors[4]
    assert errors[9].startswith("mask:") and "empty" in errors[9]
    assert all("\n" not in e for e in errors.values())
    for row in rows:
        if row.index in errors:
            assert not (out / row.key).exists()
            continue
        files = sorted(p.name for p in (out / row.key).iterdir())
        n = 1 if row.given.get("keep") else FAST["num_images"]
        assert len(files) == n + 1 and files[-1] == "result.json"
        report = json.loads((out / row.key / "result.json").read_text())
        assert report["batch"]["fingerprint"] == row.fingerprint
        assert report["prompt"] == row.prompt and report["settings"]["seed"] == row.given["seed"]
    # The log: one line per row of this run, streamed; no leftovers of the write protocol.
    log = _jsonl(out)
    assert sorted(x["row"] for x in log) == list(range(1, 13))
    assert not (out / ".partial").exists()
    assert (out / "summary.md").read_text().count("| done |") == GOOD


def test_a_row_equals_the_editor_called_alone(local_run, editor):
    manifest, out, _, shared, _ = local_run
    row = read_manifest(manifest, shared)[0]  # chelsea, "sunglasses", seed 0
    result = editor(row.image, row.mask, row.prompt, config=EditConfig(**FAST, seed=0))
    got = pixels(out / row.key)
    want = {f"{c.rank:02d}-seed{c.seed}.png": np.asarray(c.image) for c in result.candidates}
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_rerun_skips_done_rows_retries_bad_ones_and_refuses_other_settings(local_run, tmp_path):
    manifest, out, _, shared, _ = local_run
    before = {k: (p / "result.json").stat().st_mtime_ns for k, p in row_folders(out).items()}
    summary = run_batch(manifest, out, shared=shared, device="cpu", progress=False)
    last = summary["last_run"]
    assert (last["done"], last["failed"], last["skipped_done"]) == (0, BAD, GOOD)
    assert {
        k: (p / "result.json").stat().st_mtime_ns for k, p in row_folders(out).items()
    } == before
    # Another shared setting makes every row's folder stale: refused before any work.
    other = Shared(**{**shared.to_dict(), "settings": {**FAST, "num_images": 3}})
    with pytest.raises(
        InputError, match=r"out: .* other inputs or settings \(differs in num_images\)"
    ):
        run_batch(manifest, out, shared=other, device="cpu", progress=False)
    assert {
        k: (p / "result.json").stat().st_mtime_ns for k, p in row_folders(out).items()
    } == before


def test_manifest_checks_name_the_row(tmp_path, shared_images, shared):
    write_manifest(tmp_path, shared_images)

    def check(text: str, match: str, suffix: str = ".jsonl") -> None:
        path = tmp_path / f"m{suffix}"
        path.write_text(text)
        with pytest.raises(InputError, match=match):
            read_manifest(path, shared)

    good = '{"image": "chelsea.png", "mask": "chelsea.mask-eyes.png", "prompt": "hat"}\n'
    check(good + '{"image": "chelsea.png", "mask": "m.png", "promt": "x"}\n',
          r"row 2 \(line 2\): unknown key 'promt'")  # fmt: skip
    check(good + "{oops\n", r"line 2: not valid JSON")
    check(good + good, r"row 2 \(line 2\): same folder .* as row 1")
    check(good.replace("}", ', "steps": "many"}'), r"row 1 .*num_inference_steps: 'many'")
    check(good.replace("}", ', "skip_timesteps": 3}'), r"skip_timesteps: applies to method pixel")
    check(good.replace("}", ', "id": "../x"}'), r"id: '../x' must be")
    check(good.replace("}", ', "num_images": 0}'), r"row 1 .*num_images: 0 must be")
    check("image,mask\nchelsea.png,chelsea.mask-eyes.png\n", r"row 1 \(line 2\): missing 'prompt'",
          ".csv")  # fmt: skip
    check("", r"has no rows")
    # CSV: text cells take the settings' types; an empty cell is "not given", an empty prompt
    # stays an empty prompt; the flag names work as keys.
    path = tmp_path / "m.csv"
    path.write_text(
        "image,mask,prompt,steps,rank,seed,shrink_kernels\n"
        'chelsea.png,chelsea.mask-eyes.png,,6,false,,"5,3"\n'
    )
    (row,) = read_manifest(path, shared)
    assert row.prompt == "" and row.settings["num_inference_steps"] == 6
    assert row.settings["rank"] is False and row.settings["seed"] == 0
    assert row.settings["shrink_kernels"] == [5, 3] and row.line == 2
    # The key follows the files' content, not their names.
    (tmp_path / "copy.png").write_bytes((tmp_path / "chelsea.png").read_bytes())
    path.write_text(
        "image,mask,prompt\nchelsea.png,chelsea.mask-eyes.png,a\ncopy.png,chelsea.mask-eyes.png,a\n"
    )
    with pytest.raises(InputError, match="same folder"):
        read_manifest(path, shared)


def test_out_of_memory_halves_the_batch(tmp_path, shared_images, shared, monkeypatch):
    from blendedit.latent.pipeline import BlendedLatentDiffusion

    real = BlendedLatentDiffusion.generate
    calls = []

    def generate(self, state, seeds, *args, **kwargs):
        calls.append(len(seeds))
        if len(seeds) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, state, seeds, *args, **kwargs)

    monkeypatch.setattr(BlendedLatentDiffusion, "generate", generate)
    manifest = tmp_path / "one.jsonl"
    manifest.write_text(
        json.dumps(
            {
                "image": str(shared_images / "chelsea.png"),
                "mask": str(shared_images / "chelsea.mask-eyes.png"),
                "prompt": "hat",
            }
        )
        + "\n"
    )
    summary = run_batch(manifest, tmp_path / "out", shared=shared, device="cpu", progress=False)
    assert summary["done"] == 1 and calls == [2, 1, 1]
    (folder,) = row_folders(tmp_path / "out").values()
    assert json.loads((folder / "result.json").read_text())["settings"]["batch_size_used"] == 1


def test_cli_reports_failed_rows_and_exits_1(local_run, tiny_sd_dir, tiny_clip_dir, capsys):
    manifest, out, *_ = local_run
    argv = ["batch", str(manifest), "--out", str(out), "--model", str(tiny_sd_dir),
            "--clip-model", str(tiny_clip_dir), "--steps", "4", "--size", "64",
            "--num-images", "2", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 1  # resumed: nothing to edit, the two bad rows fail again
    err = capsys.readouterr().err
    assert f"12 rows: {GOOD} done, {BAD} failed" in err and "0 edited" in err
    assert "row 4 (line 4): image: no such file" in err
    assert main([*argv, "--workers", "2"]) == 2
    assert "workers: --workers needs --engine ray" in capsys.readouterr().err


def test_local_engine_never_imports_ray(local_run):
    if local_run[4]:
        pytest.skip("ray was imported before the local run (by another test module)")
    assert "ray" not in sys.modules


def test_a_second_driver_on_the_same_folder_stops(local_run):
    _, out, *_ = local_run
    first = BatchStore(out)
    with first.session(), pytest.raises(InputError, match="another batch run is writing"):
        BatchStore(out).open()


def test_eval_takes_the_engine_options(tmp_path, shared_images, capsys):
    argv = ["eval", "--images", str(shared_images), "--out", str(tmp_path / "e"), "--workers", "2"]
    assert main(argv) == 2
    assert "workers: --workers needs --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_paths_become_absolute_for_workers_elsewhere(tmp_path, shared_images, tiny_sd_dir,
                                                     monkeypatch):  # fmt: skip
    write_manifest(tmp_path / "in", shared_images)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text(
        "image,mask,prompt\nin/chelsea.png,in/chelsea.mask-eyes.png,a\n"
    )
    rel = Path(os.path.relpath(tiny_sd_dir, tmp_path))
    (row,) = read_manifest("m.csv", Shared(model=str(rel), clip_model="org/some-hub-id"))
    assert row.image == str(tmp_path / "in" / "chelsea.png")
    assert row.model == str(tiny_sd_dir) and row.clip_model == "org/some-hub-id"


def test_ray_engine_without_ray_is_one_line(local_run, tmp_path, monkeypatch):
    manifest, _, _, shared, _ = local_run
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(InputError, match=r'^engine: ray needs Ray Data; .*"blendedit\[ray\]"'):
        run_batch(manifest, tmp_path / "out", shared=shared, engine="ray", progress=False)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # Nothing edited and nothing lost: the missing file is recorded, the other rows wait.
    assert (summary["done"], summary["failed"], summary["pending"]) == (0, 1, GOOD + 1)
