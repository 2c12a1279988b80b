"""Issue 25, "what it must show": the web server under a bounded loopback load of the bombs
(``tools/bomb_load.py``, a few requests of each kind here; 30 in ``docs/security.md``) keeps its
peak memory under 2 GB above its idle level and answers a normal Generate afterwards."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bomb_load.py"


def _tool():
    spec = importlib.util.spec_from_file_location("bomb_load", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_bounded_load_of_bombs_leaves_the_server_well(tmp_path: Path):
    tool = _tool()
    out = tmp_path / "bombs.json"
    argv = ["--requests", "10", "--concurrency", "2", "--rss-limit-gb", "6", "--json", str(out)]
    code = tool.main(argv)
    r = json.loads(out.read_text())
    assert not r["stopped_over_rss_limit"]
    assert r["peak_above_idle_mb"] < 2048, r
    assert r["generate_after"].startswith("1 result for 'a hat'"), r
    assert code == 0
    a = r["answers"]
    assert a["layer-file"] == [
        "editor: the paint layer is 14000x14000 px, larger than the 1280 px preview the brush "
        "paints on (server option --preview-side); reload the page"
    ]
    assert a["layer-blob"][0].startswith("editor: the layer is 14000x14000 px")
    assert a["many-layers"] == [
        "editor: 100 paint layers; at most 4 are taken (server option --max-layers)"
    ]
    assert "196.0 MP" in a["photo"][0] and "--max-megapixels" in a["photo"][0]
    assert r["rss_end_mb"] - r["rss_idle_mb"] < 256  # nothing of the flood kept
