"""``blendedit api --engine ray`` autoscaling (tiny models, CPU): between 1 and 2 replicas, a burst
of concurrent requests makes Serve start the second replica (two replicas' pids answer jobs, every
request answered once); idle, it goes back to one replica.

Serve's delays are short here (``RayBackend(autoscaling_overrides=...)``; the command line keeps
its own). As in ``test_api_ray.py``, the outer test re-runs this module in a network namespace
that has only ``lo`` (``unshare -n``, root), where the inner test runs; it skips any other way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_fixtures import running
from test_api_ray import _concurrently, _post

from blendedit.api.settings import ApiOptions
from blendedit.options import ModelOptions
from ray_netns import INNER, inner_only, run_inside

inner = inner_only("test_ray_serve_autoscales_in_a_loopback_only_namespace")
BURST = 8
STEPS = 250  # ~3 s a request, 8 on one replica ~25 s: longer than a replica takes to start
SHORT = {  # Serve's autoscaling_config over RayBackend's (5 s up, 120 s down)
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2.0,
    "upscale_delay_s": 1.0,
    "downscale_delay_s": 2.0,
}


@pytest.mark.slow
@pytest.mark.skipif(INNER, reason="the outer half of this module")
def test_ray_serve_autoscales_in_a_loopback_only_namespace():
    pytest.importorskip("ray.serve", reason='Ray Serve is not installed ("blendedit[serve]")')
    summary = run_inside(__file__, 180, RAY_SERVE_LOG_TO_STDERR="0")
    assert "1 passed" in summary, summary[-4000:]


# ------------------------------------------------------------------------------------------------
# Inside the namespace
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def autoscaling_backend(tiny_sd_dir, tiny_clip_dir) -> Iterator[Any]:
    """1 to 2 replicas on a private local cluster, started here (shut down by ``serve.shutdown``
    and ``ray.shutdown``)."""
    import ray
    from ray import serve

    from blendedit.api.ray import RayBackend, ServeOptions

    models = ModelOptions(model=str(tiny_sd_dir), clip_model=str(tiny_clip_dir), device="cpu")
    ray.init(
        num_cpus=4,  # logical: room for the 2 replicas and Serve's controller
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        log_to_driver=False,
    )
    try:
        backend = RayBackend(
            models, ApiOptions(max_queue=32, per_key=32, max_n=2).check(), "tiny-sd",
            ServeOptions(min_replicas=1, max_replicas=2, retries=0, start_timeout_s=60),
            autoscaling_overrides=SHORT,
        )  # fmt: skip
        yield backend
        backend.close()
    finally:
        serve.shutdown()
        ray.shutdown()


def _running_replicas(app: str) -> int:
    from ray import serve

    deployment = serve.status().applications[app].deployments["EditorReplica"]
    return sum(n for state, n in deployment.replica_states.items() if state == "RUNNING")


def _wait_for(what: str, ok: Any, timeout_s: float) -> float:
    """Seconds until ``ok()``; fails after ``timeout_s``."""
    t0 = time.monotonic()
    while not ok():
        assert time.monotonic() - t0 < timeout_s, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.25)
    return time.monotonic() - t0


@inner
def test_a_burst_scales_up_to_two_replicas_and_idle_back_to_one(autoscaling_backend, photo, mask):
    backend = autoscaling_backend
    assert backend.slots == 2  # admission counts the most replicas
    _wait_for("one replica running", lambda: _running_replicas(backend.name) == 1, 30)
    most = [1]
    done = threading.Event()

    def watch() -> None:  # the most replicas running at once, while the burst lasts
        while not done.wait(0.25):
            most[0] = max(most[0], _running_replicas(backend.name))

    watcher = threading.Thread(target=watch, daemon=True)
    seeds = list(range(200, 200 + BURST))
    with running(backend, backend.options) as url:
        watcher.start()
        try:
            answers = _concurrently(lambda s: _post(url, photo, mask, s, STEPS), seeds)
        finally:
            done.set()
            watcher.join(10)
        assert all(isinstance(r, httpx.Response) for r in answers), answers
        assert [r.status_code for r in answers] == [200] * BURST, [r.text for r in answers]
        bodies = [r.json() for r in answers]
        assert [b["seeds"] for b in bodies] == [[s] for s in seeds]  # each its own answer
        assert len({b["id"] for b in bodies}) == BURST  # none answered twice
        health = backend.health()
        assert (health["served"], health["failed"], health["retried"]) == (BURST, 0, 0)
        assert health["running"] == health["waiting"] == 0
        assert most[0] == 2, most  # Serve started the second replica...
        assert len(backend.served_by) == 2, backend.served_by  # ...and it answered jobs
        assert sum(backend.served_by.values()) == BURST
        # Idle: back to one replica (downscale_delay_s 2 s, then the replica's graceful stop).
        _wait_for("back to one replica", lambda: _running_replicas(backend.name) == 1, 45)
        r = _post(url, photo, mask, 300)  # the one left still answers
        assert r.status_code == 200 and r.json()["seeds"] == [300], r.text
