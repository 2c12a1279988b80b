"""``blendedit batch --engine ray`` on real local Ray clusters, tiny models, the 12-row manifest:
outputs pixel-equal to the local engine's, a worker killed mid-run, a driver killed and run again,
a cluster without the asked GPUs. Every good row ends done exactly once, the 2 bad rows reported,
the summary's counts equal to the folders.

Ray listens on every interface, and traffic beyond loopback is not allowed on the machines these
tests run on: the outer test re-runs this module in a new network namespace that has only ``lo``
(``unshare -n``, root), where the inner tests run; they skip when run any other way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from batch_fixtures import BAD, FAST, GOOD, pixels, row_folders, write_manifest
from PIL import Image

from blendedit.batch import RayOptions, Shared, read_manifest, run_batch
from blendedit.errors import InputError
from ray_netns import INNER, inner_only, run_inside

inner = inner_only("test_ray_suite_in_a_loopback_only_namespace")


@pytest.mark.slow
@pytest.mark.skipif(INNER, reason="the outer half of this module")
def test_ray_suite_in_a_loopback_only_namespace():
    pytest.importorskip("ray", reason='Ray is not installed (pip install "blendedit[ray]")')
    summary = run_inside(__file__, 900)
    assert "5 passed" in summary, summary[-4000:]  # 4, and the selection rows (issue 21)


# ------------------------------------------------------------------------------------------------
# Inside the namespace
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job(tmp_path_factory, shared_images, tiny_sd_dir, tiny_clip_dir):
    """The manifest, shared settings and the local engine's outputs to compare against."""
    root = tmp_path_factory.mktemp("ray-batch")
    manifest = write_manifest(root / "in", shared_images)
    shared = Shared(model=str(tiny_sd_dir), clip_model=str(tiny_clip_dir), settings=dict(FAST))
    local = run_batch(manifest, root / "local", shared=shared, device="cpu", progress=False)
    assert (local["done"], local["failed"]) == (GOOD, BAD)
    return {"root": root, "manifest": manifest, "shared": shared, "local": root / "local"}


def _same_as_local(out: Path, local: Path) -> None:
    """Every good row done once, equal to the local run's pixels; the summary matches."""
    folders, want = row_folders(out), row_folders(local)
    assert folders.keys() == want.keys() and len(folders) == GOOD
    for key, folder in folders.items():
        got, ref = pixels(folder), pixels(want[key])
        assert got.keys() == ref.keys()
        for name in ref:
            np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{key}/{name}")
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["pending"]) == (GOOD, BAD, 0)
    assert {e["folder"] for e in summary["entries"] if e["status"] == "done"} == set(folders)
    assert {e["row"] for e in summary["entries"] if e["status"] == "failed"} == {4, 9}
    # Exactly once: no row was committed twice (each "done" line is one commit).
    log = [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines()]
    done = [x["key"] for x in log if x["status"] == "done"]
    assert len(done) == len(set(done))
    assert not (out / ".partial").exists() or not any((out / ".partial").iterdir())


@pytest.fixture(scope="module")
def eval_job(tmp_path_factory, tiny_sd_dir, tiny_clip_dir):
    """Tiny models and quick settings for the evaluation (as tests/test_eval_run.py)."""
    from blendedit.config import EditConfig
    from blendedit.eval import EvalModels, EvalSettings
    from tiny_eval_models import lpips_weight_files, tiny_resnet_classifier

    root = tmp_path_factory.mktemp("eval-models")
    trunk, lin = lpips_weight_files(root / "lpips")
    models = EvalModels(
        sd_model=str(tiny_sd_dir),
        clip_model=str(tiny_clip_dir),
        score_clip_model=str(tiny_clip_dir),
        classifier=str(tiny_resnet_classifier(root / "classifier")),
        lpips_weights=(str(trunk), str(lin)),
        device="cpu",
    )
    settings = EvalSettings(
        methods=("latent", "latent-decoded"),
        n_images=3,
        batch=2,
        limit=2,
        max_side=128,
        latent=EditConfig(num_inference_steps=4, size=64),
        time_single=False,
        warmup=False,
        progress=False,
    )
    return models, settings


@pytest.fixture(scope="class")
def ray_in_process():
    import ray

    ray.init(
        num_cpus=4,  # logical: leaves room beyond the 2 workers (Ray Data starves otherwise)
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@inner
class TestInProcess:
    def test_too_few_gpus_is_one_line_at_once(self, ray_in_process, job):
        out = job["root"] / "no-gpu"
        with pytest.raises(InputError, match=r"^gpus_per_worker: 2 worker\(s\) x 1 GPU need 2 GPUs; the cluster has 0"):  # fmt: skip
            run_batch(job["manifest"], out, shared=job["shared"], engine="ray",
                      ray=RayOptions(workers=2, gpus_per_worker=1), progress=False)  # fmt: skip
        assert not row_folders(out)

    def test_equal_to_local_with_a_worker_killed_mid_run(self, ray_in_process, job):
        out = job["root"] / "ray"
        killed: list[int] = []
        stop = threading.Event()

        def kill_first_worker() -> None:
            """SIGKILL the first worker seen editing (its pid names its .partial folder)."""
            while not stop.is_set():
                partial = out / ".partial"
                for p in partial.iterdir() if partial.is_dir() else []:
                    pid = int(p.name.split(".")[-2])
                    if pid != os.getpid():
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        return
                time.sleep(0.01)

        watcher = threading.Thread(target=kill_first_worker, daemon=True)
        watcher.start()
        try:
            summary = run_batch(job["manifest"], out, shared=job["shared"], engine="ray",
                                ray=RayOptions(workers=2), device="cpu", threads=1,
                                progress=False)  # fmt: skip
        finally:
            stop.set()
            watcher.join()
        assert killed, "no worker was seen editing"
        assert summary["last_run"]["ray_workers"] == 2
        _same_as_local(out, job["local"])
        # The killed worker was replaced: rows were committed by processes other than it, by
        # more than the 2 first workers' pids in all when it had committed some itself.
        writers = {
            json.loads((f / "result.json").read_text())["batch"]["worker"].rsplit(":", 1)[1]
            for f in row_folders(out).values()
        }
        assert str(killed[0]) not in writers or len(writers) >= 3

    def test_eval_units_on_ray_equal_the_local_run(self, ray_in_process, eval_job, tmp_path,
                                                   shared_images):  # fmt: skip
        from blendedit.eval import run_eval, without_timings

        models, settings = eval_job
        ray_out, local_out = tmp_path / "ray", tmp_path / "local"
        ray_report = run_eval(shared_images, ray_out, settings, models, engine="ray",
                              ray=RayOptions(workers=2))  # fmt: skip
        local_report = run_eval(shared_images, local_out, settings, models)
        assert without_timings(ray_report) == without_timings(local_report)
        made = sorted(p.relative_to(ray_out) for p in ray_out.glob("predictions/*/*/*.png"))
        assert len(made) == 2 * 2 * 2  # methods x inputs x batch
        for rel in made:
            a, b = np.asarray(Image.open(ray_out / rel)), np.asarray(Image.open(local_out / rel))
            np.testing.assert_array_equal(a, b, err_msg=str(rel))
        # Resumes like the local run: the cache is complete, nothing is sent to the cluster.
        before = {p: p.stat().st_mtime_ns for p in ray_out.glob("predictions/*/*/*")}
        again = run_eval(shared_images, ray_out, settings, models, engine="ray",
                         ray=RayOptions(workers=2))  # fmt: skip
        assert without_timings(again) == without_timings(ray_report)
        assert {p: p.stat().st_mtime_ns for p in ray_out.glob("predictions/*/*/*")} == before
        assert not list(ray_out.glob("predictions/*/.*"))

    def test_selection_rows_on_ray_equal_the_local_run(self, ray_in_process, tmp_path,
                                                        shared_images, tiny_sd_dir, tiny_clip_dir):  # fmt: skip
        """Rows that select (issue 21: mask_points, mask_box with a tiny saved SAM) are edited
        exactly once on Ray, their masks and pixels equal to the local engine's."""
        from tiny_segmenters import build_sam

        sam = build_sam(tmp_path / "sam")
        shutil.copy(shared_images / "chelsea.png", tmp_path / "chelsea.png")
        rows = [{"image": "chelsea.png", "prompt": "a hat", "mask_points": [[200, 100], [300, 80, 0]]},
                {"image": "chelsea.png", "prompt": "a hat", "mask_box": [100, 50, 300, 200]}]  # fmt: skip
        manifest = tmp_path / "sel.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        shared = Shared(model=str(tiny_sd_dir), clip_model=str(tiny_clip_dir),
                        settings={**FAST, "num_images": 1}, segmenter=str(sam))  # fmt: skip
        local = run_batch(manifest, tmp_path / "local", shared=shared, device="cpu", progress=False)
        out = tmp_path / "ray"
        summary = run_batch(manifest, out, shared=shared, engine="ray", ray=RayOptions(workers=1),
                            device="cpu", threads=1, progress=False)  # fmt: skip
        assert (local["done"], summary["done"], summary["failed"]) == (2, 2, 0)
        folders, want = row_folders(out), row_folders(tmp_path / "local")
        assert folders.keys() == want.keys()
        for key, folder in folders.items():
            got, ref = pixels(folder), pixels(want[key])
            assert "mask.png" in got and got.keys() == ref.keys()
            for name in ref:
                np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{key}/{name}")
        log = [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines()]
        done = [x["key"] for x in log if x["status"] == "done"]
        assert len(done) == len(set(done)) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="class")
def head(tmp_path_factory):
    """A ``ray start --head --block`` cluster (its own processes), stopped by its pid."""
    port = _free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=4",
            "--num-gpus=0",
            "--object-store-memory=268435456",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "ray head did not start in 120 s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        # Only this head's processes: its own process group (never ``ray stop``).
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@inner
class TestCluster:
    def test_driver_killed_then_run_again(self, head, job, tiny_sd_dir, tiny_clip_dir):
        out = job["root"] / "cluster"
        argv = [sys.executable, "-m", "blendedit.cli", "batch", str(job["manifest"]),
                "--out", str(out), "--engine", "ray", "--ray-address", head, "--workers", "1",
                "--model", str(tiny_sd_dir), "--clip-model", str(tiny_clip_dir), "--steps", "4",
                "--size", "64", "--num-images", "2", "--batch-size", "2", "--device", "cpu",
                "--threads", "1", "--quiet"]  # fmt: skip
        log = job["root"] / "driver.log"
        with open(log, "wb") as f:
            driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f)
        deadline = time.monotonic() + 300
        while len(row_folders(out)) < 3 if out.is_dir() else True:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no 3 rows in 300 s"
            time.sleep(0.05)
        driver.kill()  # SIGKILL: no cleanup, no summary
        driver.wait()
        first = set(row_folders(out))
        assert 3 <= len(first) < GOOD or len(first) == GOOD
        again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert again.returncode == 1, again.stderr[-3000:]  # 1: the two bad rows failed
        summary = json.loads((out / "summary.json").read_text())
        assert summary["last_run"]["skipped_done"] >= len(first)
        _same_as_local(out, job["local"])
        rows = read_manifest(job["manifest"], job["shared"])
        assert {r.key for r in rows if r.index not in (4, 9)} == set(row_folders(out))
