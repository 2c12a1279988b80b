"""Issue 24: every published bench preset and every ``realtime-*`` preset records whether a step
cache helps it (``Architecture.caches``), and docs/cache-presets.md shows exactly those verdicts.
Pure data, no model: milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blendedit.bench.catalogue import ARCHITECTURES
from blendedit.bench.report import cache_verdict_table
from blendedit.config import PRESETS
from blendedit.latent.backbones.parts import CacheVerdict

DOCS = Path(__file__).resolve().parents[1] / "docs"
PUBLISHED = [name for name, arch in ARCHITECTURES.items() if arch.source]


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_published_preset_has_a_verdict(name: str):
    """Its family defaults' verdict, and one for its own realtime preset."""
    arch = ARCHITECTURES[name]
    assert arch.cache_verdict("default") is not None
    if arch.realtime:
        assert arch.cache_verdict(arch.realtime) is not None
    for v in arch.caches:
        assert 0 <= v.skipped <= v.calls and v.measured


def test_every_realtime_preset_has_a_verdict():
    found = {v.schedule for name in PUBLISHED for v in ARCHITECTURES[name].caches}
    missing = [p for p in PRESETS if p.startswith("realtime-") and p not in found]
    assert not missing, missing


def test_docs_table_is_the_presets_verdicts():
    """docs/cache-presets.md's table is rendered from the presets (``tools/cache_presets.py
    --docs``); a verdict changed in a family module without the docs fails here."""
    assert cache_verdict_table() in (DOCS / "cache-presets.md").read_text()


def test_verdicts_are_the_best_measured_rows():
    """Each verdict is the row of largest speed-up that tools/cache_presets.py wrote for its
    preset and schedule (docs/cache-presets.json): the presets hold what the script derived."""
    rows = json.loads((DOCS / "cache-presets.json").read_text())["rows"]
    for name in PUBLISHED:
        for v in ARCHITECTURES[name].caches:
            mine = [r for r in rows if r["preset"] == name and r["schedule"] == v.schedule]
            assert mine, (name, v.schedule)
            best = max(mine, key=lambda r: (r.get("speedup") or 0, r["skipped"]))
            assert (best["cache"], best["calls"], best["skipped"]) == (v.cache, v.calls, v.skipped)
            assert best.get("cost") == v.cost, (name, v.schedule)


def test_verdict_rule_and_line():
    """The speed-up formula, the 10% rule, and a quality measured to drop overriding speed."""
    v = CacheVerdict("default", "deepcache", 38, 25, 0.2, "sd2-base, 256 px", True)
    assert v.speedup == pytest.approx(38 / (13 + 25 * 0.2))
    assert v.helps is True and "helps: deepcache skips 25 of 38 calls" in v.line()
    few = CacheVerdict("realtime-sd-turbo", "deepcache", 3, 2, 0.2, "sd2-base", False)
    assert few.speedup > 2 and few.helps is False and "does not help" in few.line()
    assert CacheVerdict("default", "pab", 21, 1, 0.7, "x").helps is False  # 1.4% saved
    assert CacheVerdict("default", "pab", 21, 8, 0.7, "x").helps is None  # quality unmeasured
    assert "not measured" in CacheVerdict("default", "pab", 21, 8, None, "x").line()
    none_skipped = CacheVerdict("realtime-klein", "taylorseer", 3, 0, None, "x")
    assert none_skipped.helps is False and "1.00x" in none_skipped.line()  # cost irrelevant
    for name in PUBLISHED:  # every recorded verdict has its one line
        for v in ARCHITECTURES[name].caches:
            assert v.line().startswith(f"Step cache verdict ({v.schedule}, {v.calls} calls")


def test_bench_report_records_the_verdict(tmp_path: Path):
    """``blendedit bench``'s report carries the verdict line (one line, section and JSON)."""
    from blendedit.bench.measure import BenchResult
    from blendedit.bench.report import append_report

    line = ARCHITECTURES["sd2-base"].cache_verdict().line()
    r = BenchResult("sd2-base", "cpu", "float32", 1, 38, 512, "ddim", False, cache_verdict=line)
    append_report([r], tmp_path / "b.md", "blendedit bench --preset sd2-base")
    assert (tmp_path / "b.md").read_text().count(line) == 1
    assert json.loads((tmp_path / "b.json").read_text())[0]["cache_verdict"] == line


@pytest.mark.parametrize(("spec", "full"), [("taylorseer:1", 4), ("taylorseer", 3), ("pab", 2)])
def test_flux2_takes_the_attention_caches(tmp_path: Path, spec: str, full: int):
    """FLUX.2's single blocks have no ``to_q`` (one fused q, k, v and MLP projection), where the
    cache probed for a full call: the cache then failed to install (StopIteration). Over 4 calls
    TaylorSeer every call runs 4 in full, at its default 3 (warm-up) and PAB 2 (calls 1 and 3
    inside timesteps 100-800). First Block Cache is refused in one line (diffusers' hook expects
    the last block to return both streams; FLUX.2's returns one)."""
    import torch

    from blendedit.bench.build import build_backbone
    from blendedit.errors import InputError
    from blendedit.latent.cache import step_cache

    bb = build_backbone(ARCHITECTURES["tiny-flux2-klein"], "cpu", tmp_path)
    with pytest.raises(InputError, match=r"^cache: 'first-block' does not apply to a Flux2"):
        step_cache(bb.unet, "first-block", torch.ones(1, 1, 8, 8), bb.patch_size).__enter__()
    c = bb.encode_text("a photo", "", (64, 64), (64, 64))
    h = w = 64 // bb.latent_factor
    z = torch.randn(1, bb.latent_channels, h, w, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, h, w)
    mask[..., : h // 2, :] = 1
    with torch.no_grad(), step_cache(bb.unet, spec, mask, bb.patch_size) as cache:
        model = cache.wrap(bb.model_fn(c, 1, 1.0))
        for t in (900.0, 700.0, 500.0, 300.0):
            z = z + 0.01 * model(z, torch.tensor([t]))
    assert (cache.stats.calls, cache.stats.full) == (4, full)
    assert torch.isfinite(z).all()


def test_first_block_needs_a_block_diffusers_knows(tmp_path: Path):
    """diffusers' First Block Cache reads each block's signature from its registry, which has no
    Chroma block: refused in one line, not a ValueError from inside the hook."""
    import torch

    from blendedit.bench.build import build_backbone
    from blendedit.errors import InputError
    from blendedit.latent.cache import kinds_for, step_cache

    bb = build_backbone(ARCHITECTURES["tiny-chroma"], "meta", tmp_path)
    assert kinds_for(bb.unet) == ("taylorseer", "pab", "fastercache")
    with pytest.raises(InputError, match=r"^cache: 'first-block' does not apply to a Chroma"):
        step_cache(bb.unet, "first-block", torch.ones(1, 1, 8, 8), bb.patch_size).__enter__()
