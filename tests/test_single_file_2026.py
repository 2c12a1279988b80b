"""Single-file transformers of the 2025-2026 families (issue 20): BFL's FLUX.2 [klein]/[dev],
lodestones' Chroma, Tongyi's/ComfyUI's Z-Image, ComfyUI's Qwen-Image and Qwen-Image 2.1, Krea 2.
Each file holds the denoiser alone, in its authors' layout; blendedit loads it through the
transformer class's ``from_single_file`` (diffusers' own converter) and the other parts from
``--model-config``'s folder.

The files are written from tiny random-weight models by the test-only inverse converters in
``tests/original_checkpoint.py``; the round trip through diffusers' converter gives back the very
same state dict. Not run here: real files (none can be downloaded), and a tiny Chroma through
diffusers' converter (it hard-codes FLUX.1's width when it splits ``single_blocks.i.linear1``, as
for FLUX.1: the real-size layout is checked on the meta device instead)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.loaders import single_file_utils as U
from PIL import Image

from blendedit import BlendedLatentDiffusion
from blendedit.bench import ARCHITECTURES
from blendedit.bench.build import build_backbone
from blendedit.errors import InputError, ModelNotFoundError
from blendedit.latent.backbones import (
    FAMILIES,
    detect_family,
    family_defaults,
    family_of_keys,
    load_backbone,
)
from original_checkpoint import (
    COMFY,
    TRANSFORMER_FILES,
    flux_transformer_to_original,
    write_transformer_file,
)

SIZE = (64, 48)
# family -> (tiny preset, file layout, the pipeline class a folder is saved with, file name)
CASES = {
    "zimage": ("tiny-zimage", "zimage", "ZImagePipeline", "z_image_turbo_bf16.safetensors"),
    "qwen-image": (
        "tiny-qwen-image", "qwen-image", "QwenImagePipeline", "qwen_image_bf16.safetensors",
    ),
    "qwen-image-2.1": (
        "tiny-qwen-image-2.1", "qwen-image-2.1", "", "qwen_image_2.1_bf16.safetensors",
    ),
    "krea2": ("tiny-krea2", "krea2", "Krea2Pipeline", "krea2.safetensors"),
    "flux2-klein": (
        "tiny-flux2-klein", "flux2", "Flux2KleinPipeline", "flux-2-klein-base-4b.safetensors",
    ),
    "flux2-dev": ("tiny-flux2-dev", "flux2", "Flux2Pipeline", "flux2-dev.safetensors"),
    "chroma": ("tiny-chroma", "chroma", "ChromaPipeline", "Chroma1-HD.safetensors"),
}  # fmt: skip
CONVERTERS = {  # diffusers' own, as SINGLE_FILE_LOADABLE_CLASSES names them
    "chroma": U.convert_chroma_transformer_checkpoint_to_diffusers,
    "flux2": U.convert_flux2_transformer_checkpoint_to_diffusers,
    "zimage": U.convert_z_image_transformer_checkpoint_to_diffusers,
    "qwen-image": lambda checkpoint, **kw: checkpoint,
    "qwen-image-2.1": U.convert_qwen_image21_transformer_checkpoint_to_diffusers,
    "krea2": U.convert_krea2_transformer_checkpoint_to_diffusers,
}
LOADABLE = [f for f in CASES if f != "chroma"]


def _tiny(family: str, device: str, workdir: Path):
    torch.manual_seed(0)
    return build_backbone(ARCHITECTURES[CASES[family][0]], device, workdir)


def _shapes(tensors: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


@pytest.mark.parametrize("family", list(CASES))
def test_round_trip_through_diffusers_converter(family, tmp_path):
    """Each inverse converter writes the layout diffusers' converter reads: converting back gives
    the very same state dict (Chroma: names and shapes at its real size, on the meta device)."""
    layout = CASES[family][1]
    if family == "chroma":
        from diffusers import ChromaTransformer2DModel

        with torch.device("meta"):
            model = ChromaTransformer2DModel(**ARCHITECTURES["chroma"].parts["transformer"])
        state = model.state_dict()
    else:
        model = _tiny(family, "cpu", tmp_path).unet
        state = model.state_dict()
    ckpt = TRANSFORMER_FILES[layout](dict(state))
    back = CONVERTERS[layout](dict(ckpt), config=model.config)
    assert sorted(back) == sorted(state)
    if family == "chroma":
        assert all(back[k].shape == v.shape for k, v in state.items())
    else:
        assert all(torch.equal(back[k], v) for k, v in state.items())
    assert family_of_keys(_shapes(ckpt), CASES[family][3]) == family


def _files() -> list[tuple[str, dict[str, tuple[int, ...]], str]]:
    """(expected family, key -> shape, file name) of every family's transformer file, in the
    authors' layout and ComfyUI's (prefixed), and of FLUX.1 dev/schnell and Kontext."""
    out = []
    for family, (_, layout, _, name) in CASES.items():
        state = _tiny(family, "meta", Path("/nonexistent")).unet.state_dict()
        keys = _shapes(TRANSFORMER_FILES[layout](dict(state)))
        out += [(family, keys, name), (family, {COMFY + k: v for k, v in keys.items()}, name)]
        out.append((family, _shapes(state), name))  # a file saved in diffusers' names
    for preset in ("tiny-flux", "tiny-flux-kontext"):
        torch.manual_seed(0)
        flux = build_backbone(ARCHITECTURES[preset], "meta", Path("/nonexistent")).unet
        keys = _shapes(flux_transformer_to_original(flux.state_dict()))
        name = "flux1-kontext-dev.safetensors" if "kontext" in preset else "flux1-dev.safetensors"
        out.append(("flux-kontext" if "kontext" in preset else "flux", keys, name))
    return out


def test_each_file_claimed_by_its_family_alone():
    """Detection by keys: every family's file (original layout, ComfyUI's prefixed one, diffusers'
    names) is claimed by its own family and by no other; FLUX.1, Kontext, Chroma and FLUX.2 all
    have ``double_blocks``-style keys; Qwen-Image, 2.1 and Krea 2 share diffusers-style names."""
    files = _files()
    for family, keys, name in files:
        claims = [
            f for f, cls in FAMILIES.items() if cls.single_file and cls.claims_keys(keys, name)
        ]
        assert claims == [family], (family, name, claims)
    assert len(files) == 3 * len(CASES) + 2


def test_file_defaults_without_loading(tmp_path):
    """Defaults from a file's name and keys: klein base or distilled by BFL's names, dev by its
    guidance embedding, Z-Image or Turbo, Krea 2 distilled by name."""
    written = {}
    for family, name in (
        ("flux2-klein", "flux-2-klein-base-4b.safetensors"),
        ("flux2-klein", "flux-2-klein-4b.safetensors"),
        ("flux2-dev", "flux2-dev.safetensors"),
        ("zimage", "z_image_turbo_bf16.safetensors"),
        ("zimage", "z_image_bf16.safetensors"),
        ("krea2", "krea2-distilled.safetensors"),
    ):
        bb = _tiny(family, "cpu", tmp_path)
        path = write_transformer_file(bb.unet, tmp_path / name, CASES[family][1])
        assert detect_family(path) == family
        written[name] = family_defaults(path)
    steps = {name: d["num_inference_steps"] for name, d in written.items()}
    assert steps == {
        "flux-2-klein-base-4b.safetensors": 50, "flux-2-klein-4b.safetensors": 4,
        "flux2-dev.safetensors": 50, "z_image_turbo_bf16.safetensors": 9,
        "z_image_bf16.safetensors": 50, "krea2-distilled.safetensors": 4,
    }  # fmt: skip


def _folder(family: str, root: Path) -> Path:
    """A saved tiny diffusers folder of ``family`` (Qwen-Image 2.1: part by part, as its
    pipeline cannot be built here)."""
    import diffusers

    from test_latent_2026 import PARTS

    folder = root / ("Z-Image-Turbo" if family == "zimage" else family)  # Turbo, as the file
    if family == "qwen-image-2.1":
        bb = _tiny(family, "cpu", root / "w")
        for part, module in (("vae", bb.vae), ("transformer", bb.unet)):
            module.save_pretrained(folder / part)
        bb.text_encoder.save_pretrained(folder / "text_encoder")
        bb.tokenizer.save_pretrained(folder / "processor")
        bb.scheduler.save_pretrained(folder / "scheduler")
        index = {"_class_name": "QwenImage21Pipeline", "_diffusers_version": "0.42.1"}
        (folder / "model_index.json").write_text(json.dumps(index))
        return folder
    short = {"zimage": "zimage", "qwen-image": "qwen", "krea2": "krea"}
    short |= {"flux2-klein": "klein", "flux2-dev": "dev"}
    getattr(diffusers, CASES[family][2])(**PARTS[short[family]](root / "vocab")).save_pretrained(
        folder
    )
    return folder


def _config_only(folder: Path, dest: Path) -> Path:
    """The folder without the transformer's weights: what ``--model-config`` needs."""

    def ignore(directory: str, names: list[str]) -> list[str]:
        skip = Path(directory).name == "transformer"
        return [n for n in names if skip and n.endswith((".safetensors", ".bin"))]

    return Path(shutil.copytree(folder, dest, ignore=ignore))


def _photo(shared_images) -> Image.Image:
    return Image.open(shared_images / "chelsea.png").convert("RGB").resize(SIZE, Image.LANCZOS)


@pytest.mark.slow
@pytest.mark.parametrize("family", LOADABLE)
def test_file_loads_and_edits_as_the_folder(family, tmp_path, shared_images):
    """``load_backbone(file, model_config=folder)``: the family detected from the file's keys,
    the transformer's weights bit for bit the folder's, and an edit (two steps, a partial mask)
    the same pixels as from the folder itself."""
    folder = _folder(family, tmp_path)
    prefix = "" if family in ("flux2-klein", "krea2") else COMFY  # ComfyUI's files, and not
    cls = FAMILIES[family]
    name = CASES[family][3]
    saved = load_backbone(folder, torch.float32, True)
    path = write_transformer_file(saved.unet, tmp_path / name, CASES[family][1], prefix)
    config = _config_only(folder, tmp_path / "config")
    assert detect_family(path) == family
    loaded = load_backbone(path, torch.float32, True, model_config=str(config))
    assert type(loaded) is cls and type(loaded.unet) is type(saved.unet)
    ours, theirs = loaded.unet.state_dict(), saved.unet.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())
    m = np.zeros(SIZE[::-1], np.uint8)
    m[12:36, 16:44] = 255
    run = {"seeds": [3], "num_inference_steps": 2, "rank": False, "size": SIZE[0]}
    a, b = (
        np.asarray(
            BlendedLatentDiffusion(bb)(
                _photo(shared_images), Image.fromarray(m), "a rose", **run
            ).images[0]
        )
        for bb in (saved, loaded)
    )
    assert np.array_equal(a, b)
    assert not np.array_equal(a[12:36, 16:44], np.asarray(_photo(shared_images))[12:36, 16:44])


def test_chroma_file_detected_and_stopped_in_one_line_by_the_converter(tmp_path):
    """A tiny Chroma file is Chroma's and loads as far as diffusers' converter, which splits
    ``single_blocks.i.linear1`` at FLUX.1's width (3072): one line naming ``--model-config``."""
    bb = _tiny("chroma", "cpu", tmp_path)
    path = write_transformer_file(bb.unet, tmp_path / "Chroma1-HD.safetensors", "chroma")
    assert detect_family(path) == "chroma"
    assert family_defaults(path)["num_inference_steps"] == 35
    folder = tmp_path / "config"
    bb.unet.save_config(folder / "transformer")
    index = {
        "_class_name": "ChromaPipeline",
        "transformer": ["diffusers", "ChromaTransformer2DModel"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelNotFoundError, match="split_with_sizes") as err:
        load_backbone(path, torch.float32, True, model_config=str(folder))
    assert "\n" not in str(err.value) and "--model-config" in str(err.value)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            "none",
            "model-config: 'z_image_turbo_bf16.safetensors' holds only the transformer; pass --model-config",
        ),
        ("ckpt", "loads from .safetensors"),
    ],
)
def test_transformer_file_errors_are_one_line(tmp_path, given, message):
    """A transformer-only file without ``--model-config`` says so; the new formats load from
    .safetensors only (a pickle is never unpickled beyond its tensors)."""
    bb = _tiny("zimage", "cpu", tmp_path)
    path = write_transformer_file(bb.unet, tmp_path / "z_image_turbo_bf16.safetensors", "zimage")
    if given == "ckpt":
        state = TRANSFORMER_FILES["zimage"](dict(bb.unet.state_dict()))
        path = tmp_path / "z_image_turbo.ckpt"
        torch.save({"state_dict": state}, path)
        assert detect_family(path) == "zimage"  # keys read with weights_only=True
    with pytest.raises(InputError, match=re.escape(message)) as err:
        load_backbone(
            path, torch.float32, True, model_config=str(tmp_path) if given == "ckpt" else None
        )
    assert "\n" not in str(err.value)


def test_qwen_image_edit_file_refused_by_name(tmp_path):
    """Qwen-Image-Edit's transformer has Qwen-Image's keys: its file (by ComfyUI's name) is
    refused in one line rather than loaded as Qwen-Image."""
    state = _tiny("qwen-image", "meta", tmp_path).unet.state_dict()
    keys = _shapes(state)
    with pytest.raises(InputError, match="Qwen-Image-Edit") as err:
        family_of_keys(keys, "qwen_image_edit_fp8_e4m3fn.safetensors")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_cli_edits_with_a_transformer_file(tmp_path, shared_images):
    """``blendedit edit --model FILE --model-config FOLDER`` (ComfyUI's Z-Image-Turbo file) paints
    the folder run's pixels; result.json names the family."""
    from blendedit.cli import main

    turbo = _folder("zimage", tmp_path)
    saved = load_backbone(turbo, torch.float32, True)
    path = write_transformer_file(
        saved.unet, tmp_path / "z_image_turbo_bf16.safetensors", "zimage", COMFY
    )
    config = _config_only(turbo, tmp_path / "config")
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    _photo(shared_images).resize((90, 60)).save(photo)
    m = np.zeros((60, 90), np.uint8)
    m[20:40, 10:80] = 255
    Image.fromarray(m).save(mask)
    outs = []
    for run, model, extra in (
        ("folder", turbo, []),
        ("file", path, ["--model-config", str(config)]),
    ):
        argv = [
            "edit", str(photo), "--mask", str(mask), "--prompt", "a red flower", "--model",
            str(model), "--no-rank", "--steps", "2", "--num-images", "1", "--size", "64",
            "--device", "cpu", "--out", str(tmp_path / run), "--quiet", *extra,
        ]  # fmt: skip
        assert main(argv) == 0
        outs.append(np.asarray(Image.open(tmp_path / run / "01-seed0.png")))
    result = json.loads((tmp_path / "file" / "result.json").read_text())
    assert result["settings"]["family"] == "zimage"
    assert outs[0].shape == (60, 90, 3) and np.array_equal(*outs)


def test_transformer_file_with_quantize_is_one_line(tmp_path):
    """diffusers 0.42's ``from_single_file`` takes a file's weights as quantized already (its
    quantizer is made ``pre_quantized``), so ``--quantize int8`` would load a bf16 file unquantized:
    refused in one line (gguf files are the quantized single files)."""
    bb = _tiny("zimage", "cpu", tmp_path)
    path = write_transformer_file(bb.unet, tmp_path / "z_image_turbo.safetensors", "zimage")
    with pytest.raises(InputError, match="quantize: int8 applies to a diffusers folder") as err:
        load_backbone(path, torch.float32, True, str(tmp_path), quantize="int8")
    assert "\n" not in str(err.value)
