"""Blended Diffusion editor on the tiny ADM reference model and a tiny CLIP: blending, local mode,
seeds, ranking, sizes, settings and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blendedit.errors import InputError
from blendedit.pixel.adm import ADMConfig
from blendedit.pixel.gaussian import GaussianDiffusion
from blendedit.pixel.pipeline import PIXEL_PRESETS, BlendedDiffusion, PixelConfig, pixel_preset

REF = Path(__file__).resolve().parents[1] / "data" / "reference" / "adm"
pytestmark = pytest.mark.skipif(not REF.is_dir(), reason=f"ADM reference data not found at {REF}")

# 10 respaced steps, skip 5: start at t = 4 and run 5 steps; 2 augmented copies.
FAST = {"timestep_respacing": "10", "skip_timesteps": 5, "aug_num": 2, "num_images": 2}


@pytest.fixture(scope="module")
def editor(tiny_clip_dir: Path) -> BlendedDiffusion:
    """Loaded through the real path: safetensors checkpoint + guided-diffusion JSON config."""
    return BlendedDiffusion.from_pretrained(
        REF / "tiny_adm.safetensors",
        model_config=REF / "tiny_adm_config.json",
        clip_model=str(tiny_clip_dir),
    )


@pytest.fixture(scope="module")
def small() -> tuple[Image.Image, np.ndarray]:
    """A 32x32 photo (the tiny model's own size: no resizing anywhere) and a box mask."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    mask = np.zeros((32, 32), bool)
    mask[8:20, 10:24] = True
    return img, mask


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


# -- loading --------------------------------------------------------------------------------------


def test_from_pretrained_with_config_json(editor: BlendedDiffusion, tiny_clip_dir: Path) -> None:
    assert editor.image_size == 32 and editor.config.num_channels == 32
    assert editor.device.type == "cpu" and editor.dtype == torch.float32
    assert all(not p.requires_grad for p in editor.model.parameters())
    cfg = ADMConfig.from_json(REF / "tiny_adm_config.json")
    again = BlendedDiffusion.from_pretrained(
        REF / "tiny_adm.safetensors", model_config=cfg, clip_model=None
    )
    assert again.clip is None and again.config == cfg
    with pytest.raises(InputError, match="model_config"):
        BlendedDiffusion.from_pretrained(REF / "tiny_adm.safetensors", model_config="nope.json")
    with pytest.raises(InputError):  # the 256x256 default config does not fit the tiny weights
        BlendedDiffusion.from_pretrained(REF / "tiny_adm.safetensors", clip_model=None)


# -- blending and the local baseline --------------------------------------------------------------


def test_blended_background_equals_source_outside_the_mask(editor, small) -> None:
    img, mask = small
    for background in ("decoded", "stitch"):
        r = editor(img, mask, "a red flower", seed=0, background=background, feather=0, **FAST)
        for c in r.candidates:
            # blended after every step, x0 itself after the last: exact at the model's size
            assert np.array_equal(_arr(c.image)[~mask], _arr(img)[~mask])
            assert not np.array_equal(_arr(c.image)[mask], _arr(img)[mask])
    assert r.settings["algorithm"] == "blended-diffusion" and r.method == "pixel"


def test_blending_uses_the_noise_level_landed_on(editor, small, monkeypatch) -> None:
    """Start: x0 noised to t_start; after the step t -> t-1: x0 noised to t-1; none at the end."""
    calls: list[int] = []
    original = GaussianDiffusion.q_sample

    def spy(self, x0, t, noise=None, generator=None):
        calls.append(int(t))
        return original(self, x0, t, noise, generator)

    monkeypatch.setattr(GaussianDiffusion, "q_sample", spy)
    img, mask = small
    r = editor(img, mask, "a red flower", seed=0, **{**FAST, "num_images": 1})
    assert calls == [4, 3, 2, 1, 0]
    assert r.timesteps == [444, 333, 222, 111, 0]  # model timesteps of respaced steps 4..0


def test_local_mode_does_not_blend(editor, small) -> None:
    img, mask = small
    r = editor(img, mask, "a red flower", seed=0, local=True, background="decoded", **FAST)
    assert r.settings["algorithm"] == "local-clip-guided-diffusion"
    assert r.settings["lpips_used"] is False  # no LPIPS weights: L2 term only
    for c in r.candidates:
        assert not np.array_equal(_arr(c.decoded)[~mask], _arr(img)[~mask])
    stitched = editor(img, mask, "a red flower", seed=0, local=True, feather=0, **FAST)
    for c in stitched.candidates:  # the final paste-back still applies with background="stitch"
        assert np.array_equal(_arr(c.image)[~mask], _arr(img)[~mask])


def test_local_background_loss_lowers_background_error(editor, small) -> None:
    img, mask = small
    src = _arr(img).astype(np.float64)

    def bg_mse(l2: float) -> float:
        r = editor(
            img, mask, "a red flower", seed=0, local=True, background="decoded", rank=False,
            l2_sim_lambda=l2, **{**FAST, "skip_timesteps": 7},
        )  # fmt: skip
        return float(np.mean([((_arr(c.decoded) - src)[~mask] ** 2).mean() for c in r.candidates]))

    assert bg_mse(10000.0) < 0.8 * bg_mse(0.0)


# -- seeds, ranking, sizes ------------------------------------------------------------------------


def test_same_seed_gives_identical_pixels(editor, small) -> None:
    img, mask = small
    a = editor(img, mask, "a red flower", seed=7, **FAST)
    b = editor(img, mask, "a red flower", seed=7, **FAST)
    assert a.seeds == b.seeds
    for x, y in zip(a.candidates, b.candidates, strict=True):
        assert np.array_equal(_arr(x.decoded), _arr(y.decoded))
    c = editor(img, mask, "a red flower", seed=9, **FAST)
    assert not np.array_equal(_arr(a.candidates[0].decoded), _arr(c.candidates[0].decoded))


def test_candidate_regenerated_alone_matches_batch(editor, small) -> None:
    """Every random draw (start noise, step noise, blend noise, augmentations) comes from the
    candidate's own generator: one candidate regenerated alone equals its batched self."""
    img, mask = small
    batch = editor(img, mask, "a red flower", seeds=[3, 4], batch_size=1, **FAST)
    for cand in batch.candidates:
        alone = editor(img, mask, "a red flower", seeds=[cand.seed], **FAST)
        assert np.array_equal(_arr(alone.best.decoded), _arr(cand.decoded))


def test_ranking_orders_scores_descending(editor, small) -> None:
    img, mask = small
    r = editor(img, mask, "a red flower", seed=1, **{**FAST, "num_images": 3})
    assert [c.rank for c in r.candidates] == [1, 2, 3]
    assert all(s is not None for s in r.scores)
    assert r.scores == sorted(r.scores, reverse=True)
    unranked = editor(img, mask, "a red flower", seed=1, rank=False, **{**FAST, "num_images": 3})
    assert unranked.seeds == [1, 2, 3] and unranked.scores == [None] * 3


@pytest.mark.parametrize("fit", ["stretch", "pad"])
def test_output_has_input_size(editor, shared_images, fit) -> None:
    case = next(
        c for c in json.loads((shared_images / "cases.json").read_text()) if "chelsea" in c["image"]
    )
    src = Image.open(shared_images / case["image"])
    assert src.size[0] != src.size[1]
    r = editor(
        src, shared_images / case["mask"], case["prompt"], seed=0, fit=fit, feather=0,
        region="full", **{**FAST, "num_images": 1},
    )  # fmt: skip
    assert r.input_size == src.size
    assert r.working_size == ((32, 32) if fit == "stretch" else (32, 21))  # pad: padded to 32
    assert all(im.size == src.size for im in r.images)
    assert r.best.decoded is not None and r.best.decoded.size == src.size
    mask = np.asarray(Image.open(shared_images / case["mask"]).convert("L")) >= 128
    assert np.array_equal(_arr(r.best.image)[~mask], _arr(src.convert("RGB"))[~mask])


def test_fit_pad_keeps_aspect_and_marks_padding_as_background(editor) -> None:
    cfg = PixelConfig(fit="pad")
    assert editor.full_work_size((64, 32), cfg) == (32, 16)
    assert editor.full_work_size((64, 32), PixelConfig()) == (32, 32)
    x = torch.full((1, 3, 16, 32), 0.5)
    mask = torch.zeros(1, 1, 16, 32)
    mask[..., 20:] = 1
    x0, m, box = editor.fit_input(x, mask)
    assert x0.shape == (1, 3, 32, 32) and m.shape == (1, 1, 32, 32)
    assert box == (0, 8, 32, 16)
    assert m[..., :8, :].sum() == 0 and m[..., 24:, :].sum() == 0  # padding: background
    assert m[..., 8:24, 20:].all() and not m[..., 8:24, :20].any()
    assert torch.equal(x0, torch.full((1, 3, 32, 32), 0.5))  # reflected


# -- samplers, process, progress ------------------------------------------------------------------


def test_ddim_sampler_is_deterministic_and_differs_from_ddpm(editor, small) -> None:
    img, mask = small
    one = {**FAST, "num_images": 1}
    a = editor(img, mask, "a red flower", seed=0, sampler="ddim", **one)
    b = editor(img, mask, "a red flower", seed=0, sampler="ddim", **one)
    c = editor(img, mask, "a red flower", seed=0, sampler="ddpm", **one)
    assert np.array_equal(_arr(a.best.decoded), _arr(b.best.decoded))
    assert not np.array_equal(_arr(a.best.decoded), _arr(c.best.decoded))
    d = editor(img, mask, "a red flower", seed=0, sampler="ddim", eta=1.0, **one)
    assert not np.array_equal(_arr(a.best.decoded), _arr(d.best.decoded))


def test_process_frames_and_progress(editor, shared_images) -> None:
    seen: list[tuple[int, int]] = []
    r = editor(
        shared_images / "coffee.png", shared_images / "coffee.mask-drink.png", "green tea",
        seed=0, return_process=True, progress=lambda d, t: seen.append((d, t)), batch_size=1,
        **FAST,
    )  # fmt: skip
    assert len(r.best.process) == 5 and r.best.process[0].size == r.best.decoded.size
    assert r.candidates[1].process is None
    assert seen[-1] == (10, 10) and len(seen) == 10
    assert r.timings.total > 0 and r.timings.denoise > 0


# -- settings and errors --------------------------------------------------------------------------


def test_config_presets_replace_and_validate() -> None:
    assert PIXEL_PRESETS["default"] == PixelConfig()
    assert pixel_preset("paper").num_images == 64 and pixel_preset("local").local
    assert PixelConfig(timestep_respacing=100).timestep_respacing == "100"  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown setting"):
        PixelConfig().replace(guidance_scale=5)
    with pytest.raises(InputError, match="preset"):
        pixel_preset("nope")
    for bad in ({"fit": "crop"}, {"aug_num": -1}, {"feather": 20}, {"range_lambda": -1.0}):
        with pytest.raises(InputError):
            PixelConfig().replace(**bad).validate()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sampler": "euler"}, "sampler"),
        ({"skip_timesteps": 10}, "skip_timesteps"),
        ({"timestep_respacing": "abc"}, "timestep_respacing"),
        ({"background": "blur"}, "background"),
    ],
)
def test_bad_settings_raise_one_line(editor, small, kwargs, match) -> None:
    img, mask = small
    with pytest.raises(InputError, match=match) as e:
        editor(img, mask, "a red flower", seed=0, **{**FAST, **kwargs})
    assert "\n" not in str(e.value)


def test_bad_inputs_raise_one_line(editor, small) -> None:
    img, mask = small
    for args in (
        (img, np.zeros((32, 32), bool), "a red flower"),  # empty mask
        (img, np.zeros((8, 8), bool), "a red flower"),  # mask of another size
    ):
        with pytest.raises(InputError) as e:
            editor(*args, seed=0, **FAST)
        assert "\n" not in str(e.value)
    no_clip = BlendedDiffusion(editor.model, None)
    with pytest.raises(InputError, match="CLIP"):
        no_clip(img, mask, "a red flower", seed=0, **FAST)
    # without CLIP guidance and ranking the blending alone still runs
    r = no_clip(img, mask, "x", seed=0, clip_guidance_lambda=0.0, rank=False, **FAST)
    assert r.scores == [None, None]


def test_empty_prompt_is_unguided(editor, small, monkeypatch) -> None:
    """An empty prompt (fill from the surroundings) runs without any guidance, like the official
    cond_fn (zero gradient): no CLIP, range or background term; same pixels as all weights 0."""
    import blendedit.pixel.pipeline as pipe

    img, mask = small
    calls: list[int] = []
    real = pipe.clip_guidance_grad
    monkeypatch.setattr(
        pipe, "clip_guidance_grad", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    empty = editor(img, mask, "  ", seed=3, **FAST)
    assert calls == [] and empty.scores == [None, None]  # nothing to rank against
    off = {"clip_guidance_lambda": 0.0, "range_lambda": 0.0}
    zero = editor(img, mask, "a red flower", seed=3, rank=False, **off, **FAST)
    assert len(calls) == 5  # guided path, all terms zero
    for a, b in zip(empty.candidates, zero.candidates, strict=True):
        assert np.array_equal(_arr(a.decoded), _arr(b.decoded))
    guided = editor(img, mask, "a red flower", seed=3, rank=False, **FAST)
    assert not np.array_equal(_arr(guided.candidates[0].decoded), _arr(zero.candidates[0].decoded))


def test_local_mode_with_lpips_weights(tiny_clip_dir: Path, small, tmp_path: Path, caplog) -> None:
    """lpips_weights=(trunk, lin) files load through LPIPS.from_pretrained and join the loss."""
    from safetensors.torch import save_file

    from blendedit.frame.metrics import LPIPS

    ref = LPIPS("alex")  # random weights, in the published files' key layout
    sd = ref.state_dict()
    save_file(
        {k: v for k, v in sd.items() if k.startswith("features.")}, tmp_path / "t.safetensors"
    )
    lins = {f"lin{i}.model.1.weight": sd[f"lins.{i}.weight"] for i in range(5)}
    save_file(lins, tmp_path / "l.safetensors")
    ed = BlendedDiffusion.from_pretrained(
        REF / "tiny_adm.safetensors",
        model_config=REF / "tiny_adm_config.json",
        clip_model=str(tiny_clip_dir),
        lpips_weights=(str(tmp_path / "t.safetensors"), str(tmp_path / "l.safetensors")),
        lpips_net="alex",
    )
    img, mask = small
    with caplog.at_level("WARNING"):
        r = ed(img, mask, "a red flower", seed=0, local=True, **{**FAST, "num_images": 1})
    assert r.settings["lpips_used"] is True and "LPIPS" not in caplog.text
    plain = ed(img, mask, "a red flower", seed=0, local=True, lpips_sim_lambda=0.0,
               **{**FAST, "num_images": 1})  # fmt: skip
    assert plain.settings["lpips_used"] is False
    assert not np.array_equal(_arr(r.best.decoded), _arr(plain.best.decoded))


def test_fp16_loads_with_guided_diffusion_mixed_precision(tiny_clip_dir: Path) -> None:
    ed = BlendedDiffusion.from_pretrained(
        REF / "tiny_adm.safetensors",
        model_config=REF / "tiny_adm_config.json",
        clip_model=None,
        torch_dtype="fp16",
    )
    assert ed.config.use_fp16 and ed.dtype == torch.float16
    assert ed.model.time_embed[0].weight.dtype == torch.float32  # only the block convs are fp16
