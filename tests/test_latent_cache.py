"""Step caches and compilation in the BLD loop (latent/cache.py, latent/compiling.py): a cache
that skips nothing is bit-identical, skipped calls are counted, no state crosses chunks or edits,
First Block Cache's change is measured inside the mask, a family without the cache is one line."""

from __future__ import annotations

import pytest
import torch

from blendedit import BlendedLatentDiffusion
from blendedit.config import parse_cache
from blendedit.errors import InputError
from blendedit.latent.cache import faster_cache_config, masked_change, token_mask
from test_latent_flow import SIZE, _flux, _mask, _photo, _sd3

STEPS = 8  # blend_start 0.25: 6 denoiser calls per chunk


def _edit(editor, shared_images, seeds, **settings):
    result = editor(
        _photo(shared_images), _mask(), "a red flower", seeds=seeds, blend_start=0.25,
        mask_shrink="off", rank=False, background="decoded", region="full", size=SIZE[0],
        num_inference_steps=STEPS, **{"batch_size": len(seeds), **settings},
    )  # fmt: skip
    return result, torch.stack([c.latent for c in result.candidates])


def _sd3_three_layers(folder):
    """The tiny SD3 with 3 blocks: its last (text-free) block always runs under First Block
    Cache, so 2 would leave nothing to skip."""
    from diffusers import SD3Transformer2DModel

    bb = _sd3(folder, point_mass=False)
    torch.manual_seed(1)
    bb.unet = SD3Transformer2DModel.from_config({**bb.unet.config, "num_layers": 3}).eval()
    return bb


@pytest.fixture(scope="module")
def flow_editors(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache")
    return {
        "sd3": BlendedLatentDiffusion(_sd3_three_layers(tmp / "sd3")),
        "flux": BlendedLatentDiffusion(_flux(tmp / "flux", point_mass=False)),
    }


@pytest.mark.parametrize(
    ("family", "spec"),
    [("sd3", "first-block:0"), ("flux", "first-block:0"), ("sd3", "taylorseer:1"),
     ("flux", "taylorseer:1"), ("flux", "magcache:0"),
     ("sd3", "pab:1"), ("flux", "pab:1"), ("sd3", "fastercache:1"), ("flux", "fastercache:1")],
)  # fmt: skip
def test_transformer_cache_skipping_nothing_is_bit_identical(
    flow_editors, shared_images, family, spec
):
    """Threshold 0 / interval 1: every call runs in full, so the hooks must change no bit; a
    perturbed hook (a cached residual added on a full call) fails this."""
    editor = flow_editors[family]
    _, plain = _edit(editor, shared_images, [3, 4])
    result, cached = _edit(editor, shared_images, [3, 4], cache=spec)
    assert torch.equal(plain, cached)
    assert result.settings["cache_calls"] == STEPS - 2
    assert result.settings["cache_skipped"] == 0


def test_first_block_skips_counts_and_leaves_no_state(flow_editors, shared_images):
    """A huge threshold skips every call after the first of each chunk; one candidate per chunk
    equals that candidate alone (state reset per chunk), and the uncached run afterwards equals
    the one before (every hook removed)."""
    editor = flow_editors["sd3"]
    _, before = _edit(editor, shared_images, [5, 6])
    result, two = _edit(editor, shared_images, [5, 6], cache="first-block:1e9", batch_size=1)
    assert result.settings["cache_calls"] == 2 * (STEPS - 2)
    assert result.settings["cache_skipped"] == 2 * (STEPS - 3)
    assert not torch.equal(two, before)  # it did skip something
    _, alone = _edit(editor, shared_images, [6], cache="first-block:1e9")
    assert torch.equal(two[1:], alone)
    _, after = _edit(editor, shared_images, [5, 6])
    assert torch.equal(after, before)


def test_magcache_counts_from_blend_start_and_leaves_no_state(flow_editors, shared_images):
    """MagCache with FLUX.1's ratios: the chunk starts at step 2 of 8, past the 20% retention, so
    after its first (full) call it skips 3 in a row (the hook's limit), runs one, skips one: 4 of
    6. A step counter left at 0 would keep steps 0-1 full and skip 3 of 6. One candidate per chunk
    equals it alone, and the uncached run after equals the one before (hooks removed)."""
    editor = flow_editors["flux"]
    _, before = _edit(editor, shared_images, [5, 6])
    result, two = _edit(editor, shared_images, [5, 6], cache="magcache:1e9", batch_size=1)
    assert result.settings["cache_calls"] == 2 * (STEPS - 2)
    assert result.settings["cache_skipped"] == 2 * 4
    assert not torch.equal(two, before) and torch.isfinite(two).all()
    _, alone = _edit(editor, shared_images, [6], cache="magcache:1e9")
    assert torch.equal(two[1:], alone)
    _, after = _edit(editor, shared_images, [5, 6])
    assert torch.equal(after, before)
    with pytest.raises(InputError, match=r"^cache: 'magcache' has no calibrated ratios for a "):
        _edit(flow_editors["sd3"], shared_images, [5], cache="magcache")


@pytest.mark.parametrize(("family", "skipped"), [("sd3", 2), ("flux", 6)])
def test_pab_broadcasts_inside_its_timesteps_and_leaves_no_state(
    flow_editors, shared_images, family, skipped
):
    """Pyramid Attention Broadcast, interval 2: the odd calls of a chunk (the first always
    computes) inside timesteps (100, 800) reuse the attention. SD3's 6 calls run at t = 883, 801,
    694, 548, 338, 9: call 3 only, 1 per chunk; FLUX's (its shifted schedule) at 830, 731, 620,
    495, 352, 189: calls 1, 3, 5. A timestep callback reading anything else would not give both.
    Chunks and edits share no state."""
    editor = flow_editors[family]
    _, before = _edit(editor, shared_images, [5, 6])
    result, two = _edit(editor, shared_images, [5, 6], cache="pab", batch_size=1)
    assert result.settings["cache_calls"] == 2 * (STEPS - 2)
    assert not torch.equal(two, before) and torch.isfinite(two).all()
    _, alone = _edit(editor, shared_images, [6], cache="pab")
    assert torch.equal(two[1:], alone)
    _, after = _edit(editor, shared_images, [5, 6])
    assert torch.equal(after, before)
    assert result.settings["cache_skipped"] == skipped


@pytest.mark.parametrize(("family", "skipped"), [("sd3", 3), ("flux", 2)])
def test_fastercache_matches_the_guidance_layout_and_leaves_no_state(
    flow_editors, shared_images, family, skipped
):
    """FasterCache, attention interval 2. A chunk's first call runs uncached (it shows the call's
    layout), the hooks' first computes everything. SD3 (guidance 7: [uncond; cond] batched, an
    image out) at t = 883, 801, 694, 548, 338, 9: the unconditional half is approximated below
    t = 641 (calls 3-5) and the attention extrapolated at call 4: 3 calls of 6 not whole. FLUX.1
    (distilled guidance, one pass) at 830, 731, 620, 495, 352, 189: the attention extrapolated at
    the odd hook calls below t = 681 (calls 2 and 4). Chunks and edits share no state."""
    editor = flow_editors[family]
    _, before = _edit(editor, shared_images, [5, 6])
    result, two = _edit(editor, shared_images, [5, 6], cache="fastercache", batch_size=1)
    assert result.settings["cache_calls"] == 2 * (STEPS - 2)
    assert result.settings["cache_skipped"] == 2 * skipped
    assert not torch.equal(two, before) and torch.isfinite(two).all()
    _, alone = _edit(editor, shared_images, [6], cache="fastercache")
    assert torch.equal(two[1:], alone)
    _, after = _edit(editor, shared_images, [5, 6])
    assert torch.equal(after, before)


def test_fastercache_starting_inside_its_timesteps(flow_editors, shared_images):
    """blend_start 0.5: FLUX.1's chunk starts at t = 620, inside the attention's range, where
    diffusers' hook would extrapolate from nothing on its first call (a pipeline starts at
    1000); blendedit's timestep callback puts that call before the range: t = 620 (uncached),
    495 (the hooks' first, computed), 352 (extrapolated), 189 (computed)."""
    result = flow_editors["flux"](
        _photo(shared_images), _mask(), "a red flower", seeds=[5], blend_start=0.5,
        mask_shrink="off", rank=False, background="decoded", region="full", size=SIZE[0],
        num_inference_steps=STEPS, cache="fastercache",
    )  # fmt: skip
    assert result.settings["cache_calls"] == 4 and result.settings["cache_skipped"] == 1


def test_fastercache_on_two_calls_a_step_is_one_line_and_leaves_no_hook(tmp_path, shared_images):
    """Qwen-Image with guidance runs the prompt and the negative in two calls a step: one line
    after the chunk's first (uncached) call, and the next uncached edit is unchanged."""
    import test_latent_2026 as t26

    editor = BlendedLatentDiffusion(t26._backbone("qwen", tmp_path))
    args = (t26._photo(shared_images), t26._mask(), "a red flower")
    kw = {"seeds": [3], "num_inference_steps": 4, "guidance_scale": 3.0, "rank": False}
    kw |= {"negative_prompt": "blurry", "size": t26.SIZE[0], "mask_shrink": "off"}
    before = editor(*args, **kw).candidates[0].latent
    with pytest.raises(InputError, match=r"^cache: 'fastercache' needs one denoiser call a step"):
        editor(*args, cache="fastercache", **kw)
    assert torch.equal(editor(*args, **kw).candidates[0].latent, before)


def test_fastercache_layouts_it_cannot_split_are_one_line():
    """The call's layout as the first call shows it: SD3's guided call splits on its 2B
    arguments; one pass is guidance-distilled; two calls a step (Qwen-Image's prompt and
    negative apart) or a guided call returning tokens (Chroma) are one line."""
    sd3 = {"hidden_states": 4, "timestep": 4, "encoder_hidden_states": 4, "pooled_projections": 4}
    config, full = faster_cache_config([sd3], [4], 2, 2, "SD3Transformer2DModel")
    assert full == 4 and not config.is_guidance_distilled
    assert set(config._unconditional_conditional_input_kwargs_identifiers) == set(sd3)
    flux = {"hidden_states": 2, "timestep": 2, "img_ids": 4}  # img_ids: (N, 3), not a batch
    config, full = faster_cache_config([flux], [3], 2, 2, "FluxTransformer2DModel")
    assert full == 2 and config.is_guidance_distilled
    with pytest.raises(InputError, match=r"^cache: 'fastercache' needs one denoiser call a step"):
        faster_cache_config([flux, flux], [3, 3], 2, 2, "QwenImageTransformer2DModel")
    with pytest.raises(InputError, match=r"^cache: 'fastercache' approximates .* returns tokens"):
        faster_cache_config([{"hidden_states": 4}], [3], 2, 2, "ChromaTransformer2DModel")


def test_deepcache_on_a_unet(editor, shared_images):
    """DeepCache interval 1 is bit-identical; interval 2 skips every other call, changes the
    result a little, and a second edit repeats the first (no state across edits)."""
    args = (shared_images / "chelsea.png", shared_images / "chelsea.mask-eyes.png", "sunglasses")
    fast = {"num_inference_steps": STEPS, "size": 128, "num_images": 2, "rank": False}
    plain = editor(*args, seed=1, **fast)
    same = editor(*args, seed=1, cache="deepcache:1", **fast)
    assert all(
        torch.equal(a.latent, b.latent)
        for a, b in zip(plain.candidates, same.candidates, strict=True)
    )
    assert same.settings["cache_skipped"] == 0
    cached = editor(*args, seed=1, cache="deepcache:2", **fast)
    again = editor(*args, seed=1, cache="deepcache:2", **fast)
    assert cached.settings["cache_calls"] == STEPS - 2
    assert cached.settings["cache_skipped"] == (STEPS - 2) // 2
    a, b = plain.candidates[0].latent, cached.candidates[0].latent
    assert not torch.equal(a, b) and torch.isfinite(b).all()
    assert all(
        torch.equal(x.latent, y.latent)
        for x, y in zip(cached.candidates, again.candidates, strict=True)
    )


def test_masked_change_ignores_the_background():
    """The blend moves the background to the source's next level at each step: a criterion over
    every token would see that change (or, for a small mask, dilute the edit's). Here a change
    outside the mask is no change, and a change inside a small mask is not diluted."""
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 1  # 4 of 64 cells, one 2x2 token of 16
    tokens = token_mask(mask, 2)  # (1, 16, 1)
    assert tokens.shape == (1, 16, 1) and tokens.sum() == 1
    prev = torch.ones(1, 16, 4)
    outside = prev + 0.5 * (1 - tokens)  # only background tokens changed
    assert masked_change(outside, prev, tokens) == 0.0
    assert masked_change(outside, prev, None) > 0.4  # whole-image: would recompute
    inside = prev + 0.5 * tokens  # only the edited token changed, by 50%
    assert masked_change(inside, prev, tokens) == pytest.approx(0.5)
    assert masked_change(inside, prev, None) < 0.05  # whole-image: would wrongly skip


def test_cache_errors_are_one_line(editor, shared_images):
    args = (shared_images / "chelsea.png", shared_images / "chelsea.mask-eyes.png", "hat")
    with pytest.raises(InputError, match=r"^cache: 'first-block' does not apply to a .* deepcache"):
        editor(*args, cache="first-block")
    with pytest.raises(InputError, match=r"^cache: 'fastercache' does not apply to a .* deepc"):
        editor(*args, cache="fastercache")
    with pytest.raises(InputError, match=r"^cache: 'fast' is unknown; choose one of none"):
        editor(*args, cache="fast")
    with pytest.raises(InputError, match=r"^cache: 'deepcache:x' needs a number"):
        editor(*args, cache="deepcache:x")
    assert parse_cache("first-block:0.1") == ("first-block", 0.1)
    assert parse_cache("taylorseer") == ("taylorseer", None)


def test_compile_regional_with_buckets(tiny_sd_dir, shared_images):
    """--compile compiles the UNet's repeated blocks in place (here with the eager backend:
    the plumbing, not inductor) and gives the uncompiled pixels; a whole photo's working size is
    bucketed to 64 px."""
    ed = BlendedLatentDiffusion.from_pretrained(tiny_sd_dir, clip_model=None)
    args = (shared_images / "chelsea.png", shared_images / "chelsea.mask-eyes.png", "hat")
    fast = {"num_inference_steps": 4, "size": 96, "num_images": 1, "region": "full"}
    plain = ed(*args, seed=2, **fast)
    assert plain.working_size[0] % 64 != 0 or plain.working_size[1] % 64 != 0
    from blendedit.latent.compiling import compile_denoiser

    assert compile_denoiser(ed.unet, backend="eager") == "repeated blocks"
    ed.compiled = "repeated blocks"
    same = ed(*args, seed=2, **fast)
    assert torch.equal(plain.candidates[0].latent, same.candidates[0].latent)
    bucketed = ed(*args, seed=2, compile=True, **fast)
    assert all(s % 64 == 0 for s in bucketed.working_size)
    assert bucketed.settings["compiled"] == "repeated blocks"


def test_bench_reports_skipped_calls(tmp_path, capsys):
    """`blendedit bench --cache` runs the cache in the timed edits and reports its skipped calls
    (tiny SD at 4 steps: 3 calls, DeepCache interval 3 skips 2)."""
    import json

    from blendedit.cli import main

    report = tmp_path / "b.md"
    args = ["bench", "--preset", "tiny", "--device", "cpu", "--steps", "4", "--cache", "deepcache"]
    args += ["--repeats", "1", "--no-diffusers", "--batch", "1", "--report", str(report)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| tiny +deepcache | CPU" in out
    assert "Step cache deepcache (tiny): 2 of 3 denoiser calls skipped" in out
    row = json.loads(report.with_suffix(".json").read_text())[0]
    assert (row["cache"], row["cache_calls"], row["cache_skipped"]) == ("deepcache", 3, 2)


def test_deepcache_puts_back_an_offload_hook():
    """A block whose ``forward`` an offload hook replaced (accelerate sets an instance attribute)
    gets that hook back after the chunk, not the class's plain forward."""
    from blendedit.latent.cache import DeepCache
    from tiny_models import tiny_unet

    unet = tiny_unet()
    hooked = unet.mid_block.forward  # stands for accelerate's wrapper
    unet.mid_block.forward = hooked
    cache = DeepCache(unet)
    assert unet.mid_block.forward is not hooked
    cache.close()
    assert unet.mid_block.__dict__["forward"] is hooked
    assert "forward" not in unet.up_blocks[0].__dict__


@pytest.mark.parametrize("spec", ["pab", "taylorseer:2"])
def test_two_calls_a_step_keep_a_cache_state_each(tmp_path, spec):
    """Qwen-Image runs the negative and the prompt as two transformer calls a step (their own
    lengths): under TaylorSeer each keeps its own state (diffusers' ``cache_context``, as its
    pipeline does), so a guided step equals the two branches cached apart; without the contexts
    diffusers' hook fails on the second call's other length. PAB's hooks have no context (one
    state for every call would broadcast the negative's attention to the prompt): one line."""
    from blendedit.bench import ARCHITECTURES
    from blendedit.bench.build import build_backbone
    from blendedit.latent.cache import step_cache

    bb = build_backbone(ARCHITECTURES["tiny-qwen-image"], "cpu", tmp_path)
    c = bb.encode_text("a red flower", "a blue car", (64, 64), (64, 64))
    h = w = 64 // bb.latent_factor
    z0 = torch.randn(1, bb.latent_channels, h, w, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, h, w)
    mask[..., : h // 2, :] = 1
    times = (900.0, 700.0, 500.0, 300.0, 200.0)

    def run(parts):
        z, outs = z0.clone(), []
        with torch.no_grad(), step_cache(bb.unet, spec, mask, bb.patch_size) as cache:
            model = cache.wrap(bb.denoiser(c, 1, parts, 4.0))
            for t in times:
                zz = z.repeat(len(parts), 1, 1, 1)
                outs.append(model(zz, torch.tensor([t])))  # (P, C, h, w)
                z = z + 0.01 * outs[-1][-1:]
        return outs, cache.stats

    if spec == "pab":
        with pytest.raises(InputError, match=r"^cache: 'pab' keeps one state for every call"):
            run(("uncond", "cond"))
        assert run(("cond",))[1].skipped > 0  # one call a step (guidance 1): PAB applies
        return
    both, stats = run(("uncond", "cond"))
    uncond, _ = run(("uncond",))
    assert stats.skipped > 0  # the cache did skip work
    assert torch.allclose(both[0][:1], uncond[0], atol=1e-6)  # the first step: no cache yet
    # the prompt's branch on its own, along the same path (its z follows the cond output)
    cond, _ = run(("cond",))
    for b, k in zip(both, cond, strict=True):
        assert torch.allclose(b[1:], k, atol=1e-5)
