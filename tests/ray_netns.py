"""The outer half of the Ray tests: Ray listens on every interface, and traffic beyond loopback is
not allowed on the machines these tests run on, so each Ray test module's outer test re-runs the
module in a new network namespace that has only ``lo`` (``unshare -n``, root), where its inner
tests run (``INNER``); the inner tests skip when run any other way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

INNER = os.environ.get("BLENDEDIT_RAY_NETNS") == "1"


def inner_only(outer_test: str) -> pytest.MarkDecorator:
    """Skip an inner test outside the namespace, naming the outer test that starts it."""
    return pytest.mark.skipif(
        not INNER, reason=f"runs inside a loopback-only network namespace ({outer_test} starts it)"
    )


def namespace_problem() -> str | None:
    """Why no loopback-only namespace can be made here (None: it can)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux for a network namespace (unshare -n)"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (util-linux / iproute2)"
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        return f"unshare -n failed: {probe.stderr.decode(errors='replace').strip()[:200]}"
    return None


def run_inside(test_file: str, timeout: float, **env: str) -> str:
    """Run ``test_file``'s inner tests in a loopback-only namespace (skip when none can be made);
    fail with the output's tail unless they all pass. Returns pytest's stdout (its summary)."""
    problem = namespace_problem()
    if problem:
        pytest.skip(problem)
    tmp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths live under it
    env = {
        **os.environ,
        "BLENDEDIT_RAY_NETNS": "1",
        "RAY_TMPDIR": tmp,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",  # explicit on head and driver (Ray >= 2.59 defaults differ)
        **env,
    }
    script = 'ip link set lo up && exec "$0" -m pytest "$1" -q -x -p no:cacheprovider -rs'
    try:
        r = subprocess.run(
            ["unshare", "-n", "sh", "-c", script, sys.executable, test_file],
            env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    return r.stdout
