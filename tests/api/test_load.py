"""A short, bounded run of ``tools/api_load.py`` against the in-process server: concurrent
clients for a few seconds, every request answered once or refused with 429, none lost."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from api_fixtures import running

from blendedit.api.backend import LocalBackend
from blendedit.api.settings import ApiOptions

TOOL = Path(__file__).resolve().parents[2] / "tools" / "api_load.py"


def _tool():
    spec = importlib.util.spec_from_file_location("api_load", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_load_every_request_answered_or_refused(editor):
    tool = _tool()
    keys = [f"k{i}" for i in range(4)]
    options = ApiOptions(max_queue=1, per_key=2, api_keys=tuple(keys)).check()
    backend = LocalBackend(editor, options, "tiny-sd")
    with running(backend, options) as url:
        r = tool.run_level(url, 4, 3.0, keys, tool.request_form(2), os.getpid())
    backend.close()
    assert r["accounted"] and r["lost"] == 0 and r["errors"] == []
    assert r["answered_twice"] == 0 and r["ok"] >= 1
    assert r["ok"] + r["refused"] == r["sent"]
    assert r["refused"] >= 1  # 4 clients, room for 2: some are refused with 429
    assert backend.served == r["ok"] and backend.refused == r["refused"]
    assert r["p50_s"] is not None and r["rss_mb"]["max"] > 0
