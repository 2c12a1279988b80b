"""LoRA on the transformer families (issue 20: SD3, FLUX.1 and Kontext, Chroma, Z-Image, Qwen-Image,
2.1 and Edit, FLUX.2 [klein] and [dev], Krea 2): each family names its diffusers LoRA mixin
(``Backbone.lora_loader``) and ``latent/lora.py`` loads through it. On each family's tiny random
model, a random LoRA made with PEFT and written by the mixin's own ``save_lora_weights``
(diffusers' file format, the transformer and, where the mixin loads into one, the text encoder):
the edit changes and removal gives it back bit for bit; the family's own diffusers pipeline
loading the same file (``pipe.load_lora_weights``) gives the same denoiser output; a LoRA of
another family or of other shapes is one line."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json

import diffusers
import numpy as np
import pytest
import torch
from diffusers.loaders.lora_base import LoraBaseMixin
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from PIL import Image

from blendedit import BlendedLatentDiffusion
from blendedit.bench import ARCHITECTURES
from blendedit.bench.build import build_backbone
from blendedit.cli import main
from blendedit.errors import InputError
from blendedit.latent.backbones import FAMILIES, Flux2Klein
from blendedit.latent.lora import apply_loras
from test_qwenimage21 import StandInProcessor

SIZE = (64, 48)  # (W, H) px, a multiple of every tiny family's token
TINY = {  # family -> its tiny bench preset (random weights)
    "sd3": "tiny-sd3",
    "flux": "tiny-flux",
    "flux-kontext": "tiny-flux-kontext",
    "chroma": "tiny-chroma",
    "zimage": "tiny-zimage",
    "qwen-image": "tiny-qwen-image",
    "qwen-image-2.1": "tiny-qwen-image-2.1",
    "qwen-image-edit": "",  # tiny_models.tiny_qwen_edit_parts
    "flux2-klein": "tiny-flux2-klein",
    "flux2-dev": "tiny-flux2-dev",
    "krea2": "tiny-krea2",
}
TARGETS = ["to_q", "to_v", "to_out.0"]  # attention projections every transformer here has


def _backbone(family, tmp_path):
    torch.manual_seed(0)
    if family == "qwen-image-edit":  # no bench preset: the parts of its own tests
        from blendedit.latent.backbones import QwenImageEdit
        from tiny_models import tiny_qwen_edit_parts

        p = tiny_qwen_edit_parts(tmp_path / "parts")
        names = ("vae", "transformer", "text_encoder", "tokenizer", "processor", "scheduler")
        return QwenImageEdit(*(p[n] for n in names))
    return build_backbone(ARCHITECTURES[TINY[family]], "cpu", tmp_path / "parts")


def _layers(model, targets, seed):
    """A random PEFT LoRA (r 4, alpha 8, non-zero B) on a copy of ``model``: its weights and its
    config (what diffusers' training scripts store as the file's metadata)."""
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    model = inject_adapter_in_model(config, copy.deepcopy(model))
    return get_peft_model_state_dict(model), config.to_dict()


def save_lora(folder, loader, transformer, text_encoder=None, seed=1):
    """A LoRA on ``transformer`` and, where the family's mixin ``loader`` loads into
    ``text_encoder`` (SD3 and FLUX.1: CLIP; Chroma: T5), on its attention's query and value too,
    written by the mixin's ``save_lora_weights`` with each part's config (PEFT's keys; T5's in
    diffusers' ``lora_linear_layer`` form, the one its text-encoder loader reads for names other
    than CLIP's)."""
    mixin = getattr(diffusers.loaders, loader)
    layers, config = _layers(transformer, TARGETS, seed)
    given = {"transformer_lora_layers": layers, "transformer_lora_adapter_metadata": config}
    if text_encoder is not None and "text_encoder" in mixin._lora_loadable_modules:
        names = {n.rsplit(".", 1)[-1] for n, _ in text_encoder.named_modules()}
        clip = "q_proj" in names
        layers, config = _layers(text_encoder, ["q_proj", "v_proj"] if clip else ["q", "v"], 2)
        if not clip:
            down, up = ".lora_linear_layer.down.", ".lora_linear_layer.up."
            layers = {k.replace(".lora_A.", down).replace(".lora_B.", up): v
                      for k, v in layers.items()}  # fmt: skip
        given |= {"text_encoder_lora_layers": layers, "text_encoder_lora_adapter_metadata": config}
    mixin.save_lora_weights(folder, **given)
    return folder


def _save_for(bb, folder):
    return save_lora(folder, bb.lora_loader, bb.unet, bb.text_encoders()[0])


def _pipeline(bb):
    """diffusers' text-to-image pipeline of ``bb``'s family on ``bb``'s own components."""
    cls = getattr(diffusers, type(bb).pipelines[0])
    stand_in = {
        "transformer": bb.unet,
        "text_encoder_select_layers": getattr(bb, "layers", None),  # Krea 2
        "processor": StandInProcessor(bb.tokenizer),  # Qwen-Image 2.1 (needs torchvision)
    }
    given = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in stand_in and (name == "transformer" or p.default is inspect.Parameter.empty):
            given[name] = stand_in[name]
        elif name != "self" and p.default is inspect.Parameter.empty:
            given[name] = getattr(bb, name)
    pipe = cls(**given)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _denoised(bb, inputs, c_args=("a red flower", "")):
    """One call of blendedit's guided model function (CFG 3 where the family takes it) on the
    prompt's encoding (with the photo's for a family made for editing): (1, C, h, w)."""
    x, z0, z = inputs
    c = bb.encode_text(*c_args, SIZE, SIZE)
    c = bb.condition_on_image(c, x, torch.ones(1, 1, SIZE[1], SIZE[0]), z0)
    with torch.no_grad():
        return bb.model_fn(c, 1, 3.0)(z, torch.tensor(700.0))


def _inputs(bb):
    """A photo x (1, 3, H, W) in [-1, 1], its latents z0 = E(x) and a noisy latent of them."""
    torch.manual_seed(3)
    x = torch.rand(1, 3, SIZE[1], SIZE[0]) * 2 - 1
    z0 = bb.encode_image(x)
    return x, z0, 0.3 * z0 + 0.7 * torch.randn_like(z0)


def _photo_and_mask():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
    m = np.zeros(SIZE[::-1], np.uint8)
    m[12:36, 16:44] = 255
    return photo, Image.fromarray(m)


def _edit(editor):
    photo, mask = _photo_and_mask()
    result = editor(
        photo, mask, "a red flower", seeds=[2], num_inference_steps=2, rank=False,
        size=SIZE[0], mask_shrink="off", region="full", background="decoded",
    )  # fmt: skip
    return result.candidates[0].latent


def _snapshot(models):
    return [
        ({k: v.detach().clone() for k, v in m.state_dict().items()}, dict(m.named_modules()))
        for m in models
    ]


def _assert_restored(models, snaps) -> None:
    for model, (tensors, modules) in zip(models, snaps, strict=True):
        now = model.state_dict()
        assert set(now) == set(tensors)
        assert all(torch.equal(now[k], v) for k, v in tensors.items())
        now_modules = dict(model.named_modules())
        assert set(now_modules) == set(modules)
        assert all(now_modules[k] is m for k, m in modules.items())  # the same objects


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("lora: "), msg
    return msg


def test_each_family_names_the_mixin_of_its_own_pipelines():
    """A family's ``lora_loader`` is the LoRA mixin every one of its diffusers pipelines inherits
    (Chroma's and Kontext's: FLUX.1's; Qwen-Image 2.1's and Qwen-Image-Edit's: Qwen-Image's;
    FLUX.2 [dev]'s: klein's); a family whose pipelines have none (the paper's LDM) names none."""
    for family, cls in FAMILIES.items():
        pipelines = [getattr(diffusers, p) for p in cls.pipelines]
        mixins = {
            b.__name__
            for p in pipelines
            for b in p.__mro__
            if issubclass(b, LoraBaseMixin) and b is not LoraBaseMixin
        }
        if not cls.lora_loader:
            assert not mixins, family
            continue
        mixin = getattr(diffusers.loaders, cls.lora_loader)
        assert all(issubclass(p, mixin) for p in pipelines), family
    assert FAMILIES["ldm"].lora_loader == ""
    assert FAMILIES["chroma"].lora_loader == FAMILIES["flux"].lora_loader == "FluxLoraLoaderMixin"


@pytest.mark.parametrize("family", list(TINY))
def test_lora_changes_the_edit_matches_diffusers_and_removes_bit_identically(tmp_path, family):
    """(a) The edit with the LoRA differs from the edit without; unloading gives back the same
    modules and tensors and the bit-identical edit. (b) Parity: the family's own diffusers
    pipeline (``pipe.load_lora_weights`` of the same file, adapter scale 0.7 by ``set_adapters``)
    on a copy of the same components gives the same guided denoiser output, at float tolerance,
    as blendedit's ``--lora FILE:0.7``; the prompt was encoded before the LoRA came, so the check
    also fails if a text-encoder LoRA left a stale encoding in the family's prompt cache. Control:
    the reference at scale 1.0 differs by far more than the tolerance."""
    bb = _backbone(family, tmp_path)
    ref = copy.deepcopy(bb)  # the same weights, for diffusers' pipeline
    folder = _save_for(bb, tmp_path / "lora")
    editor = BlendedLatentDiffusion(bb)
    models = [bb.unet, *(m for m in bb.text_encoders() if m is not None)]
    snaps = _snapshot(models)
    inp = _inputs(bb)
    base_edit, base_out = _edit(editor), _denoised(bb, inp)

    editor.load_loras([f"{folder}:0.7"])
    assert editor.loras == [f"{folder}:0.7"]
    ours = _denoised(bb, inp)
    assert (ours - base_out).abs().max() > 1e-3
    assert (_edit(editor) - base_edit).abs().max() > 1e-3

    pipe = _pipeline(ref)
    pipe.load_lora_weights(str(folder), adapter_name="x")
    pipe.set_adapters(["x"], [0.7])
    torch.testing.assert_close(ours, _denoised(ref, inp), atol=1e-5, rtol=1e-5)
    pipe.set_adapters(["x"], [1.0])
    with pytest.raises(AssertionError):  # the same check fails at another scale
        torch.testing.assert_close(ours, _denoised(ref, inp), atol=1e-5, rtol=1e-5)

    editor.unload_loras()
    assert editor.loras == []
    _assert_restored(models, snaps)
    assert torch.equal(_denoised(bb, inp), base_out)
    assert torch.equal(_edit(editor), base_edit)


def test_a_lora_of_another_family_or_other_shapes_is_one_line(tmp_path):
    """A Qwen-Image LoRA on Z-Image (its layers are named otherwise), a FLUX.1 LoRA with a
    text-encoder part on FLUX.2 [klein] (whose loader loads none) and a klein LoRA made on a
    wider transformer: one line each, naming the file, the model left untouched."""
    klein = _backbone("flux2-klein", tmp_path)
    zimage = _backbone("zimage", tmp_path)
    qwen_lora = _save_for(_backbone("qwen-image", tmp_path), tmp_path / "qwen_lora")
    flux_lora = _save_for(_backbone("flux", tmp_path), tmp_path / "flux_lora")
    cfg = dict(klein.unet.config)
    cfg["num_attention_heads"] *= 2  # twice as wide
    wide = type(klein.unet).from_config(cfg)
    wide_lora = tmp_path / "wide_lora"
    save_lora(wide_lora, klein.lora_loader, wide)
    for bb, folder, words in [
        (zimage, qwen_lora, "none of its layers (such as transformer_blocks.0.attn.to_"),
        (klein, flux_lora, "which this family's LoRA loader does not take"),
        (klein, wide_lora, "its shapes do not fit this model (at "),
    ]:
        editor = BlendedLatentDiffusion(bb)
        snaps = _snapshot([bb.unet])
        with pytest.raises(InputError) as e:
            editor.load_loras([str(folder)])
        assert folder.name in _one_line(e) and words in str(e.value)
        assert editor.loras == []
        _assert_restored([bb.unet], snaps)
    with pytest.raises(InputError) as e:  # a family naming a loader diffusers does not have
        apply_loras(klein.unet, [], [str(wide_lora)], loader="Flux9LoraLoaderMixin")
    assert "'Flux9LoraLoaderMixin'" in _one_line(e)


@pytest.mark.slow
def test_cli_edit_with_a_lora_on_flux2_klein(tmp_path, tiny_clip_dir):
    """``blendedit edit --lora FOLDER:0.8`` on a saved tiny FLUX.2 [klein] folder: the edit
    changes, the photo's size is kept, the background outside the band is exact and the result's
    provenance records the LoRA as given."""
    from tiny_models import tiny_flux2_klein_parts

    folder = tmp_path / "klein"
    pipe = diffusers.Flux2KleinPipeline(**tiny_flux2_klein_parts(tmp_path / "vocab"))
    pipe.save_pretrained(folder)
    lora = save_lora(tmp_path / "style", Flux2Klein.lora_loader, pipe.transformer)
    lora = lora / "pytorch_lora_weights.safetensors"
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    src = np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    Image.fromarray(src).save(photo)
    m = np.zeros((60, 90), np.uint8)
    m[20:30, 30:60] = 255
    Image.fromarray(m).save(mask)

    def run(out, *extra):
        argv = [
            "edit", str(photo), "--mask", str(mask), "--prompt", "a red flower", "--model",
            str(folder), "--clip-model", str(tiny_clip_dir), "--steps", "2", "--num-images", "1",
            "--size", "64", "--out", str(tmp_path / out), "--device", "cpu", "--quiet", *extra,
        ]  # fmt: skip
        assert main(argv) == 0
        files = sorted((tmp_path / out).glob("0*.png"))
        return np.asarray(Image.open(files[0]).convert("RGB")), tmp_path / out

    base, _ = run("base")
    with_lora, out = run("lora", "--lora", f"{lora}:0.8")
    assert base.shape == with_lora.shape == (60, 90, 3)
    assert np.abs(base.astype(int) - with_lora).max() > 0
    far = np.ones((60, 90), bool)
    far[8:42, 18:72] = False  # the mask and a band around it
    assert np.array_equal(with_lora[far], src[far])
    result = json.loads((out / "result.json").read_text())
    assert result["settings"]["loras"] == [f"{lora}:0.8"]
    assert result["settings"]["family"] == "flux2-klein"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "gguf"])
def test_lora_on_a_quantized_denoiser(tmp_path, mode):
    """``--quantize`` and ``--lora`` together (a 12-32B transformer on one GPU with a LoRA): on a
    tiny Z-Image loaded int8 (torchao) or from a Q8_0 GGUF file, the LoRA's change of the guided
    denoiser output is the float32 model's within 5% (relative L2; measured int8 1.8%, Q8_0 1.5%,
    fp8 11% not tested; a LoRA with other weights is off by about 107%), and unloading gives back
    the same modules and the bit-identical output."""
    from blendedit.latent import quantize as q
    from blendedit.latent.backbones import load_backbone
    from test_quantize import write_gguf
    from tiny_models import tiny_zimage_parts

    if importlib.util.find_spec(q.MODES[mode].package) is None:
        pytest.skip(f"{q.MODES[mode].package} is not installed")
    folder = tmp_path / "zimage"
    diffusers.ZImagePipeline(**tiny_zimage_parts(tmp_path / "vocab")).save_pretrained(folder)
    plain = load_backbone(folder, torch.float32, True)
    lora, other = _save_for(plain, tmp_path / "lora"), tmp_path / "other"
    save_lora(other, plain.lora_loader, plain.unet, seed=7)
    model, config = folder, None
    if mode == "gguf":
        model, config = tmp_path / "zimage-Q8_0.gguf", str(folder)
        write_gguf(folder, model)
    quantized = load_backbone(model, torch.float32, True, config, quantize=mode)
    inp = _inputs(plain)

    def change(bb, source):
        editor = BlendedLatentDiffusion(bb)
        base = _denoised(bb, inp)
        editor.load_loras([str(source)])
        out = _denoised(bb, inp)
        editor.unload_loras()
        return out - base, base

    want, _ = change(plain, lora)
    modules = dict(quantized.unet.named_modules())
    got, base = change(quantized, lora)
    assert float((got - want).norm() / want.norm()) < 0.05
    assert dict(quantized.unet.named_modules()) == modules  # the same objects, no LoRA layer
    assert torch.equal(_denoised(quantized, inp), base)
    far, _ = change(quantized, other)
    assert float((far - want).norm() / want.norm()) > 0.5


def test_lora_loaded_and_removed_under_offload(tmp_path):
    """``--offload model|sequential`` (the web editor loads LoRAs while offloaded): loaded after
    the offload, the LoRA gives the output of the same LoRA on the model in place, and removal the
    base output again. Control: sequential offload keeps the weights on "meta" between calls, and
    without its hooks taken off around the loading the adapter's weights would be lost there (the
    LoRA a no-op), which the first check catches."""
    plain = _backbone("zimage", tmp_path)
    lora = _save_for(plain, tmp_path / "lora")
    inp = _inputs(plain)
    base = _denoised(plain, inp)
    BlendedLatentDiffusion(plain).load_loras([str(lora)])
    want = _denoised(plain, inp)
    for mode in ("model", "sequential"):
        bb = _backbone("zimage", tmp_path)
        editor = BlendedLatentDiffusion(bb).enable_offload(mode, "cpu")
        editor.load_loras([str(lora)])
        assert bb.offload == mode
        torch.testing.assert_close(_denoised(bb, inp), want, atol=1e-6, rtol=1e-6)
        editor.unload_loras()
        assert torch.equal(_denoised(bb, inp), base)
