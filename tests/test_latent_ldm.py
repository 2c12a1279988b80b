"""The paper's own backbone (CompVis LDM text-to-image: LDMBert, BERT tokenizer, KL-f8 VAE) under
the BLD loop: loading a tiny LDM folder through the real path, parity with diffusers' SD inpaint
pipeline fed with the LDM parts and LDMBert embeddings, the LDM sampler and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LDMTextToImagePipeline, UNet2DConditionModel
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
    LDMBertConfig,
    LDMBertModel,
)
from PIL import Image
from transformers import BertTokenizer

from blendedit import BlendedLatentDiffusion
from blendedit.cli import main
from blendedit.latent.backbones import LatentDiffusion, detect_family
from blendedit.latent.backbones.ldm import LDM_SAMPLER
from blendedit.models import make_scheduler
from test_latent_pipeline import PointMassVAE
from tiny_models import tiny_unet, tiny_vae

WORDS = ["a", "red", "blue", "flower", "cat", "hat", "sunglasses", "dog", "blurry"]
SIZE = (96, 64)


def tiny_ldm_pipeline(folder: Path) -> LDMTextToImagePipeline:
    """LDM-1.45B's layout at toy size: LDMBert (d_model 32, 2 layers), BERT tokenizer from a
    9-word vocabulary, UNet conditioned on 32-wide states, the 8x tiny VAE, the LDM DDIM sampler."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(0)
    bert = LDMBertModel(
        LDMBertConfig(
            vocab_size=len(WORDS) + 5,
            max_position_embeddings=77,
            encoder_layers=2,
            encoder_ffn_dim=37,
            encoder_attention_heads=2,
            head_dim=16,
            d_model=32,
            pad_token_id=0,
        )
    ).eval()
    unet = tiny_unet(sample_size=8)  # native 8x8 latents, 64 px
    return LDMTextToImagePipeline(
        vqvae=tiny_vae(),
        bert=bert,
        tokenizer=BertTokenizer(str(vocab), model_max_length=77),
        unet=unet,
        scheduler=DDIMScheduler(**LDM_SAMPLER),
    )


@pytest.fixture(scope="module")
def tiny_ldm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ldm")
    tiny_ldm_pipeline(root / "vocab").save_pretrained(root / "tiny-ldm")
    return root / "tiny-ldm"


def _photo(shared_images) -> Image.Image:
    return Image.open(shared_images / "astronaut.png").convert("RGB").resize(SIZE, Image.LANCZOS)


def _mask() -> Image.Image:
    m = np.zeros(SIZE[::-1], np.uint8)
    m[16:48, 24:72] = 255
    return Image.fromarray(m)


def test_loads_as_the_ldm_family_with_the_ldm_sampler(tiny_ldm_dir):
    assert detect_family(tiny_ldm_dir) == "ldm"
    editor = BlendedLatentDiffusion.from_pretrained(tiny_ldm_dir, clip_model=None)
    assert isinstance(editor.backbone, LatentDiffusion)
    assert editor.native_size == 64 and editor.default_config().guidance_scale == 5.0
    sched = editor.scheduler
    sched.set_timesteps(50)
    # The original LDM DDIM sampler: timesteps 981, 961, ..., 1; alphas_prev[0] = alphacums[0].
    assert sched.timesteps[0] == 981 and sched.timesteps[-1] == 1
    assert not sched.config.set_alpha_to_one and sched.config.beta_schedule == "scaled_linear"
    z = editor.backbone.encode_prompt("a red flower")
    assert z.shape == (1, 77, 32)


def test_parity_with_sd_inpaint_fed_ldm_parts(tiny_ldm_dir, shared_images):
    """No LDM inpaint pipeline exists; diffusers' SD one runs the same blend on SD1-shaped parts
    when given LDMBert's embeddings (../shared/notes/backbones.md section 3)."""
    folder = tiny_ldm_dir
    bert = LDMBertModel.from_pretrained(folder, subfolder="bert")
    tok = BertTokenizer.from_pretrained(folder, subfolder="tokenizer")
    vae = PointMassVAE.from_pretrained(folder, subfolder="vqvae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    base = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    bb = LatentDiffusion(vae, unet, bert, tok, make_scheduler("ddim", base))
    editor = BlendedLatentDiffusion(bb)
    seeds, settings = [2, 9], {"num_inference_steps": 4, "guidance_scale": 5.0}
    ours = editor(
        _photo(shared_images), _mask(), "a red flower", seeds=seeds, negative_prompt="blurry",
        blend_start=0.25, mask_shrink="off", rank=False, background="decoded", region="full",
        size=96, batch_size=2, **settings,
    )  # fmt: skip
    pipe = bb.inpaint_reference(make_scheduler("ddim", base))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        prompt_embeds=bb.encode_prompt("a red flower"),
        negative_prompt_embeds=bb.encode_prompt("blurry"),
        image=_photo(shared_images),
        mask_image=_mask(),
        height=SIZE[1],
        width=SIZE[0],
        strength=0.75,
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="latent",
        **settings,
    ).images
    latents = torch.stack([c.latent for c in ours.candidates])
    assert latents.shape == ref.shape == (2, 4, 8, 12)
    torch.testing.assert_close(latents, ref, atol=2e-4, rtol=1e-4)


def test_cli_edits_with_a_tiny_ldm_folder(tiny_ldm_dir, shared_images, tmp_path):
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    _photo(shared_images).resize((120, 80)).save(photo)
    m = np.zeros((80, 120), np.uint8)
    m[20:60, 30:90] = 255
    Image.fromarray(m).save(mask)
    runs = []
    for name in ("a", "b"):
        argv = [
            "edit", str(photo), "--mask", str(mask), "--prompt", "a blue hat",
            "--model", str(tiny_ldm_dir), "--no-rank", "--steps", "4", "--num-images", "2",
            "--preset", "paper-ldm", "--out", str(tmp_path / name), "--device", "cpu",
        ]  # fmt: skip
        assert main(argv) == 0
        runs.append(tmp_path / name)
    result = json.loads((runs[0] / "result.json").read_text())
    assert result["settings"]["family"] == "ldm" and result["settings"]["blend_rule"] == "official"
    for f in ("01-seed0.png", "02-seed1.png"):
        a, b = (np.asarray(Image.open(r / f)) for r in runs)
        assert a.shape == (80, 120, 3) and np.array_equal(a, b)


def test_lora_on_ldm_is_one_line(tiny_ldm_dir, tmp_path):
    from blendedit.errors import InputError

    editor = BlendedLatentDiffusion.from_pretrained(tiny_ldm_dir, clip_model=None)
    with pytest.raises(InputError, match=r"lora: .*not ldm"):
        editor.load_loras([str(tmp_path / "x.safetensors")])
