"""``--quantize`` (issue 20, "memory for 12-32B transformers on one GPU"): a tiny Z-Image folder
loaded through diffusers' quantization backends (torchao int8/fp8 weight-only on the CPU; a GGUF
Q8_0 file written here with the ``gguf`` package's writer, loaded by diffusers' GGUF loader), the
edit close to the unquantized one; a missing backend, a family without quantized parts and a
model too large for the GPU are one line each, the last before anything loads."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from diffusers import ZImagePipeline
from PIL import Image

from blendedit import BlendedLatentDiffusion
from blendedit.errors import InputError
from blendedit.latent import quantize as q
from blendedit.latent.backbones import load_backbone, weight_memory
from blendedit.methods import check_memory
from tiny_models import tiny_zimage_parts

SIZE = (64, 48)  # (W, H) px
# original-layout names of Z-Image's single files (diffusers' converter maps them back)
ORIGINAL = [
    ("all_final_layer.2-1.", "final_layer."), ("all_x_embedder.2-1.", "x_embedder."),
    (".attention.to_out.0.", ".attention.out."), (".attention.norm_k.", ".attention.k_norm."),
    (".attention.norm_q.", ".attention.q_norm."),
]  # fmt: skip
CALL = {"seeds": [3], "num_inference_steps": 3, "rank": False, "region": "full", "size": SIZE[0]}


@pytest.fixture(scope="module")
def zimage_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("zq")
    ZImagePipeline(**tiny_zimage_parts(root / "vocab")).save_pretrained(root / "zimage")
    return root / "zimage"


def _edit(backbone, shared_images) -> torch.Tensor:
    photo = Image.open(shared_images / "chelsea.png").convert("RGB").resize(SIZE)
    m = np.zeros(SIZE[::-1], np.uint8)
    m[12:36, 16:44] = 255
    editor = BlendedLatentDiffusion(backbone)
    return editor(photo, Image.fromarray(m), "a red flower", **CALL).candidates[0].latent


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def write_gguf(folder, path) -> int:
    """The tiny transformer as a GGUF file (original-layout names; the Linear layers' weights
    whose rows are multiples of 32 in Q8_0, the rest F32, as the published GGUF files keep pad
    tokens and norms unquantized), written with the ``gguf`` package; the quantized count."""
    import gguf
    from diffusers import ZImageTransformer2DModel
    from gguf.quants import quantize

    model = ZImageTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    sd = model.state_dict()
    w, n = gguf.GGUFWriter(str(path), "zimage"), 0
    for name, v in sd.items():
        key = name
        for a, b in ORIGINAL:
            key = key.replace(a, b)
        x = v.float().numpy()
        if name in linear and x.shape[-1] % 32 == 0:
            x, n = quantize(x, gguf.GGMLQuantizationType.Q8_0), n + 1
            w.add_tensor(key, x, raw_shape=x.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(key, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return n


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "fp8", "gguf"])
def test_quantized_edit_close_to_plain(zimage_folder, tmp_path, shared_images, mode):
    """The quantized denoiser (and, int8/fp8, the Qwen3 encoder) really is quantized, and the
    edit's latents stay close (relative L2; measured int8 0.5%, fp8 3%, Q8_0 0.4%) to the
    float32 edit's (int8 and Q8_0 3%, fp8 10%); the control, a model with other random weights, is far (> 50%)."""
    if importlib.util.find_spec(q.MODES[mode].package) is None:
        pytest.skip(f"{q.MODES[mode].package} is not installed")
    plain = _edit(load_backbone(zimage_folder, torch.float32, True), shared_images)
    model, config = zimage_folder, None
    if mode == "gguf":
        model, config = tmp_path / "zimage-Q8_0.gguf", str(zimage_folder)
        assert write_gguf(zimage_folder, model) > 0
    bb = load_backbone(model, torch.float32, True, config, quantize=mode)
    kind = type(bb.unet.layers[0].attention.to_q.weight).__name__
    assert kind == {"int8": "Int8Tensor", "fp8": "Float8Tensor", "gguf": "GGUFParameter"}[mode]
    if mode != "gguf":
        assert type(bb.text_encoder.layers[0].mlp.up_proj.weight).__name__ == kind
    got = _edit(bb, shared_images)
    tolerance = {"int8": 0.03, "fp8": 0.1, "gguf": 0.03}[mode]  # measured: 0.005, 0.031, 0.004
    assert _rel(got, plain) < tolerance, _rel(got, plain)
    other = ZImagePipeline(**tiny_zimage_parts(tmp_path / "v", seed=1))
    control = load_backbone(zimage_folder, torch.float32, True)
    control.unet.load_state_dict(other.transformer.state_dict())
    assert _rel(_edit(control, shared_images), plain) > 0.5


def test_missing_backend_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name)
    )
    with pytest.raises(InputError, match=r"^quantize: nf4 needs the bitsandbytes package "):
        q.pipeline_config("nf4", {"transformer": "diffusers"}, torch.bfloat16)
    with pytest.raises(InputError, match="quantize: 'int4' is not one of nf4, int8, fp8, gguf"):
        q.check_mode("int4")


def test_family_without_quantized_parts_and_gguf_inputs(zimage_folder, tiny_sd_dir):
    with pytest.raises(InputError, match=r"^quantize: --quantize applies to .* not sd"):
        load_backbone(tiny_sd_dir, torch.float32, True, quantize="int8")
    with pytest.raises(InputError, match=r"gguf takes a \.gguf file as --model"):
        load_backbone(zimage_folder, torch.float32, True, str(zimage_folder), quantize="gguf")


def test_too_large_for_the_gpu_refused_before_loading(zimage_folder, monkeypatch):
    """The weights' memory from the parts built on the meta device: exactly the parameters
    times the bytes of each mode; a GPU with less free memory is refused in one line, before any
    weight is read (``cls.from_pretrained`` is never called)."""
    import diffusers

    counts = q.meta_counts(zimage_folder)
    assert set(counts) == {"transformer", "text_encoder", "vae"}
    full = weight_memory(zimage_folder, torch.bfloat16)
    assert full == pytest.approx(sum(counts.values()) * 2 / 1e9)
    int8 = weight_memory(zimage_folder, torch.bfloat16, "int8")
    assert int8 == pytest.approx(
        (counts["transformer"] + counts["text_encoder"] + 2 * counts["vae"]) / 1e9
    )
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (int(int8 * 1e9 * 1.5), 80e9))
    monkeypatch.setattr(diffusers.ZImagePipeline, "from_pretrained", pytest.fail)
    dev = torch.device("cuda")
    with pytest.raises(InputError) as e:
        check_memory("latent", str(zimage_folder), torch.bfloat16, dev)
    assert str(e.value).startswith(f"model: {zimage_folder} needs about 0.0 GB in bfloat16; ")
    assert str(e.value).endswith("GB free; try --quantize nf4 or --offload model")
    check_memory("latent", str(zimage_folder), torch.bfloat16, dev, quantize="int8")  # fits
    check_memory("latent", str(zimage_folder), torch.bfloat16, dev, offload="model")  # no check
    with pytest.raises(InputError, match=r"needs about 40\.9 GB in fp8; this GPU has 24\.0 GB"):
        q.check_fits("Qwen/Qwen-Image", 40.9, "fp8", dev, free_gb=24.0)


def test_bench_memory_per_mode():
    """``blendedit bench --preset P --memory``: the parts built on the meta device at 2 bytes a
    weight (bf16); the denoiser and encoder at 1 (int8/fp8) and 0.5625 (nf4)."""
    from blendedit.bench.memory import memory_table, preset_memory

    counts, gb = preset_memory("tiny-zimage")
    assert set(gb) == {"bf16", "nf4", "int8", "fp8", "gguf Q8_0", "gguf Q4_K"}
    assert gb["bf16"] == pytest.approx(2 * sum(counts.values()) / 1e9)
    assert gb["nf4"] < gb["int8"] < gb["bf16"]
    assert "| `tiny-zimage` |" in memory_table("tiny-zimage")


@pytest.mark.slow
def test_cli_edit_quantized(zimage_folder, tmp_path, shared_images, tiny_clip_dir):
    """``blendedit edit --quantize int8`` end to end: two ranked results, the size kept."""
    import json

    from blendedit.cli import main

    if importlib.util.find_spec("torchao") is None:
        pytest.skip("torchao is not installed")
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    Image.open(shared_images / "chelsea.png").convert("RGB").resize((90, 60)).save(photo)
    m = np.zeros((60, 90), np.uint8)
    m[20:40, 10:80] = 255
    Image.fromarray(m).save(mask)
    argv = [
        "edit", str(photo), "--mask", str(mask), "--prompt", "a red flower", "--model",
        str(zimage_folder), "--quantize", "int8", "--clip-model", str(tiny_clip_dir), "--steps",
        "3", "--num-images", "2", "--size", "64", "--out", str(tmp_path / "o"), "--device",
        "cpu", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert len(result["results"]) == 2
    for f in (tmp_path / "o").glob("0*.png"):
        assert Image.open(f).size == (90, 60)
