"""Outputs (issue 25, findings 5 and 6): an ``--out`` that cannot be created or written is refused
before any model loads, in one line, by every command; result files follow the process's umask."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from security_fixtures import error_line, photo, trail, write_trail

from blendedit.batch import BatchStore, run_batch
from blendedit.batch.manifest import Shared
from blendedit.cli import main
from blendedit.errors import InputError
from blendedit.frame.photo import read_photo, save_photo
from blendedit.io import check_out_dir, save_json, save_png, write_text

FAST = {"num_inference_steps": 4, "size": 64, "num_images": 2, "batch_size": 2}


@pytest.fixture()
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("blendedit.methods.load_editor", refuse)
    monkeypatch.setattr("blendedit.options.ModelOptions.load", refuse)


def _read_only_fs() -> Path | None:
    """A folder that cannot be written even by root (sysfs), or None."""
    probe = Path("/sys/blendedit-write-probe")
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys/blendedit-security-test/out")
    probe.rmdir()
    return None


@pytest.fixture(params=["under-a-file", "read-only-fs", "read-only-folder"])
def bad_out(request, tmp_path: Path) -> Path:
    """An output folder that cannot be made or written."""
    if request.param == "under-a-file":
        (tmp_path / "a-file").write_text("x")
        return tmp_path / "a-file" / "out"
    if request.param == "read-only-fs":
        path = _read_only_fs()
        if path is None:
            pytest.skip("/sys is writable here")
        return path
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    request.addfinalizer(lambda: folder.chmod(0o700))
    return folder / "out"


def _argv(command: str, images: Path, tmp_path: Path, out: Path) -> list[str]:
    chelsea = ["--mask", str(images / "chelsea.mask-eyes.png"), "--prompt", "sunglasses"]
    if command in ("edit", "compare-backgrounds"):
        return [command, str(images / "chelsea.png"), *chelsea, "--out", str(out), "--quiet"]
    if command == "batch":
        manifest = tmp_path / "edits.jsonl"
        row = {"image": str(images / "chelsea.png"), "mask": str(images / "chelsea.mask-eyes.png"),
               "prompt": "x"}  # fmt: skip
        manifest.write_text(json.dumps(row) + "\n")
        return ["batch", str(manifest), "--out", str(out), "--quiet"]
    if command == "eval":
        return ["eval", "--images", str(images), "--out", str(out), "--quiet",
                "--classifier", str(tmp_path / "no-such-classifier")]  # fmt: skip
    path = write_trail(tmp_path / "result.json", trail(model="no-such-model"))
    return ["replay", str(path), "--out", str(out), "--quiet"]


@pytest.mark.parametrize("command", ["edit", "compare-backgrounds", "batch", "eval", "replay"])
def test_an_unwritable_out_is_refused_before_any_model_loads(
    command, bad_out, shared_images, tmp_path, capsys, no_model
):
    assert main(_argv(command, shared_images, tmp_path, bad_out)) == 2
    err = error_line(capsys)
    assert err.startswith("blendedit: error: out: ") and str(bad_out) in err
    assert not bad_out.exists()


def test_the_default_out_folder_is_checked_too(
    shared_images, tmp_path, monkeypatch, capsys, no_model
):
    """Without --out, results go to ./blendedit-out/: a working folder that cannot be written is
    refused before the model loads."""
    readonly = _read_only_fs()
    if readonly is None:
        pytest.skip("/sys is writable here")
    monkeypatch.chdir(readonly.parents[1])
    argv = _argv("edit", shared_images, tmp_path, tmp_path / "unused")
    argv = argv[: argv.index("--out")] + argv[argv.index("--out") + 2 :]
    assert main(argv) == 2
    assert "blendedit-out" in error_line(capsys)


def test_check_out_dir_leaves_nothing_behind(tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    assert check_out_dir(out) == out
    assert list(tmp_path.iterdir()) == []  # the test write is removed, no folder is made
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_the_batch_store_refuses_an_unwritable_folder_in_one_line(bad_out):
    with pytest.raises(InputError) as e:
        BatchStore(bad_out).open()
    assert str(e.value).startswith("out: ") and "\n" not in str(e.value)


# -- files follow the umask -----------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_result_files_follow_the_umask(umask, tmp_path):
    want = 0o666 & ~umask
    save_json({"a": 1}, tmp_path / "a.json")
    write_text("x", tmp_path / "a.txt")
    save_png(photo(), tmp_path / "a.png")
    p = read_photo(photo())
    save_photo(p.pixels, p, tmp_path / "b.png")
    save_photo(p.pixels, p, tmp_path / "b.jpg", format="jpeg")
    px16 = (np.asarray(photo()).astype(np.uint16) * 257).copy()
    p16 = read_photo(photo())
    save_photo(px16, type(p16)(px16, "RGB"), tmp_path / "c.png")  # the 16-bit writer
    for f in tmp_path.iterdir():
        assert _mode(f) == want, f"{f.name}: {oct(_mode(f))} != {oct(want)}"


def test_a_batch_run_follows_the_umask(
    umask, editor, tiny_sd_dir, tiny_clip_dir, shared_images, tmp_path
):
    manifest = tmp_path / "edits.jsonl"
    row = {"image": str(shared_images / "chelsea.png"),
           "mask": str(shared_images / "chelsea.mask-eyes.png"), "prompt": "x"}  # fmt: skip
    manifest.write_text(json.dumps(row) + "\n")
    shared = Shared(model=str(tiny_sd_dir), clip_model=str(tiny_clip_dir), settings=dict(FAST))
    out = tmp_path / "out"
    summary = run_batch(manifest, out, shared=shared, device="cpu", progress=False)
    assert summary["done"] == 1
    files = [p for p in out.rglob("*") if p.is_file() and p.name != ".lock"]
    assert len(files) >= 5
    for f in files:
        assert _mode(f) == 0o666 & ~umask, f"{f}: {oct(_mode(f))}"
