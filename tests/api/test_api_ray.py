"""``blendedit api --engine ray``: the same app over Ray Serve replicas (tiny models, CPU).

Two replicas serve 20 concurrent requests (every one answered, once), with progress events from
the replicas; a replica killed mid-request: its requests sent again or answered with an error,
never lost; results pixel-equal to the local server's for the same seeds.

Ray listens on every interface, and traffic beyond loopback is not allowed on the machines these
tests run on: as ``tests/batch/test_batch_ray.py`` does, the outer test re-runs this module in a
new network namespace that has only ``lo`` (``unshare -n``, root), where the inner tests run;
they skip when run any other way.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from api_fixtures import FAST, png, running
from PIL import Image

from blendedit.api.backend import LocalBackend
from blendedit.api.settings import ApiOptions
from blendedit.cli import build_parser
from blendedit.errors import InputError
from blendedit.options import ModelOptions
from ray_netns import INNER, inner_only, run_inside

inner = inner_only("test_ray_serve_in_a_loopback_only_namespace")
CONCURRENT = 20


@pytest.mark.slow
@pytest.mark.skipif(INNER, reason="the outer half of this module")
def test_ray_serve_in_a_loopback_only_namespace():
    pytest.importorskip("ray.serve", reason='Ray Serve is not installed ("blendedit[serve]")')
    summary = run_inside(__file__, 300, RAY_SERVE_LOG_TO_STDERR="0")
    assert f"{3 + len(CLI_REFUSALS) + 1} passed" in summary, summary[-4000:]


# ------------------------------------------------------------------------------------------------
# Without Ray: the command line's checks
# ------------------------------------------------------------------------------------------------

CLI_REFUSALS = [
    (["--replicas", "2"], r"^replicas: --replicas needs --engine ray"),
    (["--engine", "ray", "--replicas", "2", "--max-replicas", "4"], r"^replicas: --replicas is"),
    (["--engine", "ray", "--min-replicas", "3", "--max-replicas", "2"], r"^min_replicas: 3"),
]


@pytest.mark.parametrize(("argv", "message"), CLI_REFUSALS)
def test_ray_flags_are_checked_in_one_line(argv, message):
    from blendedit.api.cli import serve_options

    args = build_parser().parse_args(["api", *argv])
    with pytest.raises(InputError, match=message):
        serve_options(args)


def test_ray_flags_make_serve_options():
    from blendedit.api.cli import serve_options

    argv = ["api", "--engine", "ray", "--min-replicas", "1", "--max-replicas", "3",
            "--gpus-per-replica", "0.5", "--ray-address", "127.0.0.1:6379"]  # fmt: skip
    so = serve_options(build_parser().parse_args(argv))
    assert so.autoscaling and (so.min_replicas, so.max_replicas) == (1, 3)
    assert so.gpus_per_replica == 0.5 and so.address == "127.0.0.1:6379"
    assert serve_options(build_parser().parse_args(["api"])) is None


# ------------------------------------------------------------------------------------------------
# Inside the namespace
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tiny_sd_dir, tiny_clip_dir) -> ModelOptions:
    return ModelOptions(model=str(tiny_sd_dir), clip_model=str(tiny_clip_dir), device="cpu")


@pytest.fixture(scope="module")
def options() -> ApiOptions:
    return ApiOptions(max_queue=32, per_key=32, max_n=2).check()


@pytest.fixture(scope="module")
def ray_backend(models, options) -> Iterator[Any]:
    """Two replicas on a private local cluster, started here (the backend connects to it and
    deletes its application on close), shut down by ``serve.shutdown`` and ``ray.shutdown``."""
    import ray
    from ray import serve

    from blendedit.api.ray import RayBackend, ServeOptions

    ray.init(
        num_cpus=4,  # logical: room for the 2 replicas and Serve's controller
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        log_to_driver=False,
    )
    try:
        backend = RayBackend(models, options, "tiny-sd", ServeOptions(replicas=2, retries=2))
        yield backend
        backend.close()
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_server(ray_backend, options) -> Iterator[str]:
    with running(ray_backend, options) as url:
        yield url


@pytest.fixture(scope="module")
def local_pixels(models, options, photo, mask) -> Iterator[Any]:
    """The local server's result for a seed (the same model options, one editor here)."""
    backend = LocalBackend(models.load(), options, "tiny-sd")
    cache: dict[tuple[int, int], np.ndarray] = {}
    with running(backend, options) as url:

        def pixels(seed: int, steps: int = 3) -> np.ndarray:
            if (seed, steps) not in cache:
                r = _post(url, photo, mask, seed, steps)
                assert r.status_code == 200, r.text
                cache[seed, steps] = _image(r.json())
            return cache[seed, steps]

        yield pixels
    backend.close()


def _post(url: str, photo: Image.Image, mask: Image.Image, seed: int, steps: int = 3,
          **headers: str) -> httpx.Response:  # fmt: skip
    files = {"image": ("p.png", png(photo), "image/png"), "mask": ("m.png", png(mask), "image/png")}
    data = {"prompt": "a red square", "seed": str(seed), "steps": str(steps)}
    return httpx.post(f"{url}/v1/blendedit/edits", files=files, data=data, timeout=240,
                      headers=headers)  # fmt: skip


def _image(body: dict[str, Any]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))))


def _concurrently(fn: Any, args: list[Any]) -> list[Any]:
    out: list[Any] = [None] * len(args)

    def one(i: int) -> None:
        try:
            out[i] = fn(args[i])
        except Exception as e:  # a lost request shows up as this
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return out


@inner
def test_the_command_serves_on_ray(tiny_sd_dir, tiny_clip_dir, photo, mask):
    """``blendedit api --engine ray``: its own cluster, one replica; stopped by SIGTERM (its
    process group too, should anything be left)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-c", "import sys; from blendedit.cli import main; sys.exit(main())",
        "api", "--engine", "ray", "--replicas", "1", "--model", str(tiny_sd_dir),
        "--clip-model", str(tiny_clip_dir), "--device", "cpu", "--offline", "--port", str(port),
        "--quiet",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == f"http://127.0.0.1:{port}/v1", proc.stderr.read()
        health = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
        assert (health["engine"], health["replicas"]) == ("ray", 1)
        r = _post(f"http://127.0.0.1:{port}", photo, mask, 5)
        assert r.status_code == 200 and r.json()["seeds"] == [5], r.text
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@inner
def test_two_replicas_answer_20_concurrent_requests_like_the_local_server(
    ray_backend, ray_server, local_pixels, photo, mask
):
    assert ray_backend.slots == 2 and ray_backend.method == "latent"
    seeds = list(range(100, 100 + CONCURRENT))
    answers = _concurrently(lambda s: _post(ray_server, photo, mask, s), seeds)
    assert all(isinstance(r, httpx.Response) for r in answers), answers
    assert [r.status_code for r in answers] == [200] * CONCURRENT, [r.text for r in answers]
    bodies = [r.json() for r in answers]
    assert [b["seeds"] for b in bodies] == [[s] for s in seeds]  # each its own answer
    assert len({b["id"] for b in bodies}) == CONCURRENT  # none answered twice
    health = ray_backend.health()
    assert (health["served"], health["failed"], health["retried"]) == (CONCURRENT, 0, 0)
    assert health["running"] == health["waiting"] == 0
    assert len(ray_backend.served_by) == 2, ray_backend.served_by  # both replicas worked
    for seed, body in zip(seeds, bodies, strict=True):
        np.testing.assert_array_equal(_image(body), local_pixels(seed), err_msg=f"seed {seed}")
    # Progress events come from the replica that runs the edit.
    files = {"image": ("p.png", png(photo), "image/png"), "mask": ("m.png", png(mask), "image/png")}
    data = {"prompt": "a red square", **FAST, "seed": "100", "stream": "true"}
    r = httpx.post(f"{ray_server}/v1/blendedit/edits", files=files, data=data, timeout=120)
    events = [b.split("\n")[0].removeprefix("event: ") for b in r.text.strip().split("\n\n")]
    assert events[0] == "queued" and events[-1] == "result" and "progress" in events
    last = json.loads(r.text.strip().split("\n\n")[-1].split("data: ", 1)[1])
    assert last["seeds"] == [100]


def _replica_pids() -> set[int]:
    """The pids of the live Serve replicas of this cluster (from Ray's actor table)."""
    from ray._private import state

    return {
        a["Pid"] for a in state.actors().values()
        if a["State"] == "ALIVE" and "ServeReplica" in a["ActorClassName"]
    }  # fmt: skip


@inner
def test_a_replica_killed_mid_request_loses_no_request(
    ray_backend, ray_server, local_pixels, photo, mask
):
    steps, seeds = 400, [7, 8, 9, 10]
    before = ray_backend.health()
    killed: list[int] = []

    def kill_a_busy_replica() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = set(ray_backend._running.values())
            if busy:
                pid = min(busy)
                assert pid != os.getpid() and pid in _replica_pids()
                os.kill(pid, signal.SIGKILL)  # by its pid: the replica running a request
                killed.append(pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_busy_replica)
    killer.start()
    answers = _concurrently(lambda s: _post(ray_server, photo, mask, s, steps), seeds)
    killer.join()
    assert killed, "no replica was seen running a request"
    assert all(isinstance(r, httpx.Response) for r in answers), answers
    health = ray_backend.health()
    done = health["served"] - before["served"]
    failed = health["failed"] - before["failed"]
    assert done + failed == len(seeds)  # each answered once: a result or an error
    assert health["retried"] > before["retried"] or failed
    for seed, r in zip(seeds, answers, strict=True):
        if r.status_code == 200:
            assert r.json()["seeds"] == [seed]
            np.testing.assert_array_equal(_image(r.json()), local_pixels(seed, steps))
        else:  # answered with an error, in OpenAI's shape
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
    # Serve put a new replica in the dead one's place: the server still answers.
    r = _post(ray_server, photo, mask, 11)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(_image(r.json()), local_pixels(11))
