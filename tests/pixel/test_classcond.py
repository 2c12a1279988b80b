"""Class-conditional ADM (the family of guided-diffusion's 512x512_diffusion.pt) under Blended
Diffusion: the tiny class-conditional model against guided-diffusion's own outputs, the class drawn
at every step from each candidate's generator, the loop against an independent computation, the
adm512 preset chosen by the checkpoint, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from blendedit.errors import InputError
from blendedit.frame import Work
from blendedit.pixel.adm import (
    ADM256_UNCOND,
    ADM512_COND,
    ADMConfig,
    ADMUNet,
    default_config,
    is_class_conditional,
    load_adm,
)
from blendedit.pixel.gaussian import GaussianDiffusion
from blendedit.pixel.pipeline import (
    PIXEL_PRESETS,
    BlendedDiffusion,
    PixelConfig,
    default_preset,
)

REF = Path(__file__).resolve().parents[1] / "data" / "reference" / "adm"
CKPT, CONFIG = REF / "tiny_adm_classcond.safetensors", REF / "tiny_adm_classcond_config.json"
pytestmark = pytest.mark.skipif(not CKPT.is_file(), reason=f"reference data not found at {REF}")

# 10 respaced steps, skip 5: start at t = 4 and run 5 steps; 2 augmented copies.
FAST = {"timestep_respacing": "10", "skip_timesteps": 5, "aug_num": 2, "num_images": 2}


@pytest.fixture(scope="module")
def cfg() -> ADMConfig:
    return ADMConfig.from_json(CONFIG)


@pytest.fixture(scope="module")
def model(cfg: ADMConfig) -> ADMUNet:
    return load_adm(CKPT, cfg)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(REF / "tiny_adm_classcond_io.safetensors"))


@pytest.fixture(scope="module")
def editor(tiny_clip_dir: Path) -> BlendedDiffusion:
    return BlendedDiffusion.from_pretrained(
        CKPT, model_config=CONFIG, clip_model=str(tiny_clip_dir)
    )


@pytest.fixture(scope="module")
def small() -> tuple[Image.Image, np.ndarray]:
    """A 32x32 photo (the tiny model's own size) and a box mask."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    mask = np.zeros((32, 32), bool)
    mask[8:20, 10:24] = True
    return img, mask


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


@pytest.fixture()
def seen_classes(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The class labels of every UNet call, in call order."""
    calls: list[list[int]] = []
    forward = ADMUNet.forward

    def spy(self, x, timesteps, y=None):
        calls.append(y.tolist() if y is not None else [])
        return forward(self, x, timesteps, y)

    monkeypatch.setattr(ADMUNet, "forward", spy)
    return calls


# -- the network against guided-diffusion ---------------------------------------------------------


def test_tiny_keys_order_and_shapes(cfg: ADMConfig) -> None:
    ref = json.loads(CONFIG.read_text())
    assert cfg.class_cond and cfg.num_classes == ref["resolved"]["num_classes"] == 1000
    with torch.device("meta"):
        meta = ADMUNet(cfg)
    sd = meta.state_dict()
    assert list(sd) == ref["state_dict_keys_in_order"]  # label_emb right after time_embed
    weights = load_file(str(CKPT))
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in weights.items()}
    assert sum(p.numel() for p in meta.parameters()) == ref["total_params"]


def test_unet_output_matches_guided_diffusion(model: ADMUNet, io: dict) -> None:
    with torch.no_grad():
        out = model(io["x"], io["unet_timesteps"], io["y"])
        swapped = model(io["x"], io["unet_timesteps"], io["y_swapped"])
    assert out.shape == (2, 6, 32, 32)
    assert _max_err(out, io["model_output"]) <= 1e-5
    assert _max_err(swapped, io["model_output_y_swapped"]) <= 1e-5
    assert _max_err(out, swapped) > 1e-3  # the class changes the output


def test_p_mean_variance_matches_guided_diffusion(model: ADMUNet, cfg: ADMConfig, io) -> None:
    d = GaussianDiffusion.create(
        cfg.diffusion_steps, cfg.noise_schedule, cfg.timestep_respacing,
        rescale_timesteps=cfg.rescale_timesteps, learn_sigma=cfg.learn_sigma,
    )  # fmt: skip
    ts = d.model_timesteps(io["t"])
    assert torch.equal(ts, io["unet_timesteps"])
    with torch.no_grad():
        out = d.p_mean_variance(model(io["x"], ts, io["y"]), io["x"], io["t"])
    for name in ("mean", "variance", "log_variance", "pred_xstart"):
        ref = io[name]
        assert _max_err(getattr(out, name), ref) <= 1e-5 * max(1.0, ref.abs().max().item()), name


def test_class_labels_are_required_exactly_for_a_class_conditional_model(model, io) -> None:
    x, ts = io["x"], io["unet_timesteps"]
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, ts)
    with pytest.raises(ValueError, match="shape"):
        model(x, ts, io["y"][:1])
    with pytest.raises(ValueError, match="class-conditional"):
        ADMUNet(ADMConfig.from_json(REF / "tiny_adm_config.json"))(x, ts, io["y"])


# -- the checkpoint picks its config and preset -----------------------------------------------------


def test_checkpoint_selects_config_and_preset(tmp_path: Path) -> None:
    pt = tmp_path / "512x512_diffusion.pt"
    torch.save(load_file(str(CKPT)), pt)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    uncond = REF / "tiny_adm.safetensors"
    assert is_class_conditional(CKPT) and is_class_conditional(pt)
    assert not is_class_conditional(uncond)
    assert not is_class_conditional(tmp_path / "garbage.pt")
    assert not is_class_conditional(tmp_path / "absent.pt")
    assert default_config(CKPT) == ADM512_COND and default_config(uncond) == ADM256_UNCOND
    assert default_config({"label_emb.weight": torch.zeros(1)}) == ADM512_COND
    assert [default_preset(p) for p in (CKPT, pt, uncond, None)] == [
        "adm512", "adm512", "default", "default",
    ]  # fmt: skip
    # No config given: the checkpoint is taken for the official 512 model, which it is not.
    with pytest.raises(InputError, match="does not fit the config") as err:
        load_adm(pt)
    assert "\n" not in str(err.value)


def test_adm512_preset_has_the_official_512_arguments() -> None:
    """blended-diffusion's optimization/arguments.py: no argument changes with
    --model_output_size 512; a random class is drawn at every step (randomize_class=True)."""
    p = PIXEL_PRESETS["adm512"]
    official = {
        "timestep_respacing": "100", "skip_timesteps": 25, "sampler": "ddpm",
        "clip_guidance_lambda": 1000.0, "range_lambda": 50.0, "aug_num": 8, "local": False,
        "lpips_sim_lambda": 1000.0, "l2_sim_lambda": 10000.0, "batch_size": 4, "class_label": -1,
    }  # fmt: skip
    assert {k: getattr(p, k) for k in official} == official
    assert p.validate() is p


# -- Blended Diffusion on the class-conditional model ---------------------------------------------


def test_class_drawn_at_every_step_from_the_candidates_generator(
    editor: BlendedDiffusion, small, seen_classes: list[list[int]]
) -> None:
    img, mask = small
    editor(img, mask, "a red flower", seeds=[3, 4], batch_size=2, **FAST)
    assert len(seen_classes) == 5 and all(len(y) == 2 for y in seen_classes)  # one call a step
    per_seed = {3: [y[0] for y in seen_classes], 4: [y[1] for y in seen_classes]}
    assert len(set(per_seed[3])) > 1 and len(set(per_seed[4])) > 1  # changes per step
    assert per_seed[3] != per_seed[4]  # and per seed
    assert all(0 <= c < 1000 for y in seen_classes for c in y)
    seen_classes.clear()
    editor(img, mask, "a red flower", seeds=[4], **FAST)  # alone: the same draws
    assert [y[0] for y in seen_classes] == per_seed[4]


def test_same_seed_same_pixels_and_background_kept(editor: BlendedDiffusion, small) -> None:
    img, mask = small
    a = editor(img, mask, "a red flower", seed=7, feather=0, **FAST)
    b = editor(img, mask, "a red flower", seed=7, feather=0, **FAST)
    c = editor(img, mask, "a red flower", seed=9, feather=0, **FAST)
    assert a.settings["class_conditional"] is True and a.settings["class_label"] == -1
    for x, y in zip(a.candidates, b.candidates, strict=True):
        assert np.array_equal(_arr(x.decoded), _arr(y.decoded))
        assert np.array_equal(_arr(x.image)[~mask], _arr(img)[~mask])
    assert not np.array_equal(_arr(a.candidates[0].decoded), _arr(c.candidates[0].decoded))


def test_unguided_loop_matches_an_independent_computation(editor: BlendedDiffusion) -> None:
    """Guidance off: the pipeline's samples equal a loop written here from the schedule: start
    x0 noised to t = 4; then per step a class y ~ U{0..999}, the UNet, the ancestral step
    (noise drawn at t = 0 too, then unused), and the blend with x0 noised to t − 1 (x0 at the end),
    every draw from one generator seeded with the candidate's seed, in that order."""
    cfg = PixelConfig(clip_guidance_lambda=0.0, range_lambda=0.0, **FAST).validate()
    gen = torch.Generator().manual_seed(123)
    x0 = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:20, 6:28] = 1
    state = editor.prepare(Work(x0, mask, False, "x"), cfg)
    got = editor.generate(state, [11], cfg, lambda n: None, False).samples

    d, model = editor.make_diffusion(cfg), editor.model
    ab = d.alphas_cumprod  # float64, respaced

    def noised(t: int, g: torch.Generator) -> torch.Tensor:
        z = torch.randn(x0.shape, generator=g)
        return float(ab[t] ** 0.5) * x0 + float((1 - ab[t]) ** 0.5) * z

    g = torch.Generator().manual_seed(11)
    x = noised(4, g)
    for t in (4, 3, 2, 1, 0):
        y = torch.randint(0, 1000, (1,), generator=g)
        with torch.no_grad():
            out = d.p_mean_variance(model(x, d.model_timesteps([t]), y), x, t)
        z = torch.randn(x.shape, generator=g)
        x = out.mean + (t > 0) * torch.exp(0.5 * out.log_variance) * z
        x = x * mask + (noised(t - 1, g) if t > 0 else x0) * (1 - mask)
    assert _max_err(got, x) <= 1e-5


def test_fixed_class_label(editor: BlendedDiffusion, small, seen_classes) -> None:
    img, mask = small
    fixed = editor(img, mask, "a red flower", seed=0, class_label=207, **FAST)
    assert seen_classes and all(y == [207, 207] for y in seen_classes)
    drawn = editor(img, mask, "a red flower", seed=0, **FAST)
    assert not np.array_equal(_arr(fixed.best.decoded), _arr(drawn.best.decoded))
    for bad, words in ((1000, "0..999"), (-2, "class index")):
        with pytest.raises(InputError, match="class_label") as err:
            editor(img, mask, "a red flower", seed=0, class_label=bad, **FAST)
        assert words in str(err.value) and "\n" not in str(err.value)
    uncond = BlendedDiffusion.from_pretrained(
        REF / "tiny_adm.safetensors", model_config=REF / "tiny_adm_config.json", clip_model=None
    )
    with pytest.raises(InputError, match="class_label: 5 needs a class-conditional model"):
        uncond(img, mask, "x", seed=0, class_label=5, clip_guidance_lambda=0.0, rank=False, **FAST)


# -- the command line -----------------------------------------------------------------------------


def test_cli_edit_with_a_class_conditional_pt(
    tmp_path: Path, tiny_clip_dir: Path, shared_images: Path, monkeypatch, capsys
) -> None:
    """``blendedit edit --method pixel --model tiny-classcond.pt``: the adm512 preset is chosen
    from the checkpoint, the run is deterministic, the size kept; a wrong config is one line."""
    import blendedit.cli as cli
    from blendedit.methods import Method

    ckpt = tmp_path / "tiny-classcond.pt"
    torch.save(load_file(str(CKPT)), ckpt)
    chosen: list[str] = []
    real = Method.preset_name

    def spy(self: Method, name: str | None, model: str | None = None) -> str:
        chosen.append(real(self, name, model))
        return chosen[-1]

    monkeypatch.setattr(Method, "preset_name", spy)
    photo = shared_images / "chelsea.png"

    def argv(out: str, *extra: str) -> list[str]:
        return [
            "edit", str(photo), "--mask", str(shared_images / "chelsea.mask-eyes.png"),
            "--prompt", "sunglasses", "--method", "pixel", "--model", str(ckpt),
            "--clip-model", str(tiny_clip_dir), "--respacing", "10", "--skip-timesteps", "6",
            "--aug-num", "2", "--num-images", "2", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / out), *extra,
        ]  # fmt: skip

    for out in ("a", "b"):
        assert cli.main(argv(out, "--model-config", str(CONFIG))) == 0
    assert chosen == ["adm512", "adm512"]
    report = json.loads((tmp_path / "a" / "result.json").read_text())
    assert report["method"] == "pixel" and report["settings"]["class_conditional"] is True
    size = Image.open(photo).size
    for r in report["results"]:
        a, b = Image.open(tmp_path / "a" / r["file"]), Image.open(tmp_path / "b" / r["file"])
        assert a.size == size and np.array_equal(_arr(a), _arr(b))
    assert cli.main(argv("c", "--model-config", str(CONFIG), "--preset", "draft")) == 0
    assert chosen[-1] == "draft"
    capsys.readouterr()
    assert cli.main(argv("d")) == 2  # no config: the official 512 settings, not this model
    err = capsys.readouterr().err.strip()
    assert "does not fit the config" in err and len(err.splitlines()) == 1
