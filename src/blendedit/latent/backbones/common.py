"""Helpers several families share, beside the base class (a family never imports a sibling's):
tokenizing, the LCM guidance input, the flow models' timestep shift and schedule, the one-encoder
families' parts and prompt cache (:class:`OneTextEncoder`) and flag-chosen defaults
(:class:`FlagDefaults`), a step cache's state per branch (:func:`branch_context`), and the random-weight text encoders and character-level tokenizers the
families' builders use (``Backbone.build``)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from blendedit.errors import InputError
from blendedit.latent.backbones.files import read_json, single_file_keys
from blendedit.models import load_cached_first

logger = logging.getLogger(__name__)

# --blend's default for models trained for inpainting, chosen from the toy world's three-way
# measurement (docs/eval-toyworld/inpaint.md, tools/inpaint_toyworld.py): on top of the model the
# blend gave the highest prompt following (86.8% against 81.9% alone) and kept the raw decode's
# background at 24.2 dB against 15.5 dB.
INPAINT_BLEND = "on"


def tokenize(tokenizer: Any, prompt: str, max_len: int) -> Any:
    """Pad to ``max_len``; warn once when the prompt is cut."""
    tok = tokenizer(
        prompt, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
    )
    if len(tokenizer(prompt).input_ids) > max_len:
        logger.warning("prompt longer than %d tokens; the rest is ignored", max_len)
    return tok


def lcm_guidance_embedding(
    unet: Any, guidance_scale: float, n: int, device: torch.device
) -> torch.Tensor | None:
    """An LCM-distilled UNet's guidance input (Luo et al. 2023, eq. 9: w = scale - 1 as a
    sinusoidal embedding of w * 1000, ``time_cond_proj_dim`` wide), (n, D); None otherwise."""
    dim = unet.config.time_cond_proj_dim
    if dim is None:
        return None
    w = torch.full((n,), (guidance_scale - 1) * 1000.0)
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
    emb = torch.cat([torch.sin(w[:, None] * freqs), torch.cos(w[:, None] * freqs)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(device, unet.dtype)


def calculate_shift(config: Any, seq_len: int, max_shift: float) -> float:
    """mu of the resolution-dependent timestep shift: linear in the number of image tokens
    (SD3 paper section 5.3.2; base_shift at base_image_seq_len tokens, max_shift at
    max_image_seq_len), read from a FlowMatch scheduler's ``config`` with diffusers' defaults;
    ``max_shift`` is the pipeline's own fallback (SD3 1.16, FLUX 1.15)."""
    base_seq, max_seq = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", max_shift)
    slope = (max_shift - base_shift) / (max_seq - base_seq)
    return seq_len * slope + base_shift - slope * base_seq


def refuse_inpainting_unet(keys: dict[str, tuple[int, ...]], name: str) -> None:
    """An original-layout (A1111/ComfyUI) UNet takes 4 input channels (text-to-image) or 9 (an
    inpainting model: latent, mask, masked image's latent); anything else is one line (SD 1.x/2.x
    and SDXL single files)."""
    conv_in = keys.get("model.diffusion_model.input_blocks.0.0.weight")  # (C_out, C_in, 3, 3)
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] not in (4, 9):
        raise InputError(
            f"model: {name!r} has a {conv_in[1]}-channel UNet; blendedit takes a text-to-image "
            "UNet (4 channels) or an inpainting UNet (9 channels)"
        )


def unet_inpaint_channels(keys: dict[str, tuple[int, ...]]) -> bool:
    """An original-layout single file whose UNet takes 9 input channels (an inpainting model)."""
    conv_in = keys.get("model.diffusion_model.input_blocks.0.0.weight")  # (C_out, C_in, 3, 3)
    return conv_in is not None and len(conv_in) == 4 and conv_in[1] == 9


def masked_image_condition(
    backbone: Any, x: torch.Tensor, mask: torch.Tensor, z_init: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The inputs a channel-conditioned inpainting model takes beside the noisy latent
    (Rombach et al. 2022, LDM section 4.5 / SD-inpainting; what diffusers' inpaint pipelines give
    a 9-channel UNet and FLUX.1 Fill): the masked image ``x * (mask < 0.5)`` (the pipelines'
    binarised rule) encoded like the source, and the mask at latent resolution, its grey levels
    kept (each cell's highest strength: a thin stroke is never lost).

    x: (1, 3, H, W) in [-1, 1]; mask: (1, 1, H, W) in [0, 1], 1 = edit; z_init: (1, C, h, w).
    Returns {"mask": (1, 1, h, w), "masked": (1, C, h, w)} on the model's device and dtype."""
    h, w = z_init.shape[-2:]
    mask = mask.to(x)
    masked = backbone.encode_image(x * (mask < 0.5).to(x))  # (1, C, h, w)
    m = torch.nn.functional.adaptive_max_pool2d(mask, (h, w))  # (1, 1, h, w)
    return {"mask": m.to(backbone.device, backbone.dtype), "masked": masked}


def with_image(z: torch.Tensor, image: dict[str, torch.Tensor]) -> torch.Tensor:
    """A UNet inpainting model's input: the noisy latents z (N, C, h, w) with the mask and the
    masked image's latents of :func:`masked_image_condition` for every row, in SD-inpainting's
    channel order -> (N, 2C + 1, h, w); z itself when ``image`` is empty (a plain model)."""
    if not image:
        return z
    n = len(z)
    m, masked = image["mask"], image["masked"]  # (1, 1, h, w), (1, C, h, w)
    return torch.cat([z, m.expand(n, -1, -1, -1), masked.expand(n, -1, -1, -1)], dim=1)


def unet_is_inpainting(model: Any, local_files_only: bool | None = None) -> bool:
    """Whether a UNet model (hub id, folder or single file) is a 9-channel inpainting one, from
    its ``unet/config.json`` or a file's keys, without loading it."""
    path, name = Path(model), str(model)
    if path.is_file():
        return unet_inpaint_channels(single_file_keys(path))
    if path.is_dir() and not (path / "unet" / "config.json").is_file():
        return False
    config = load_cached_first(
        "model", name, lambda local: read_json(name, "unet/config.json", local), local_files_only
    )
    return int(config.get("in_channels", 4)) == 9


class InpaintingUNet:
    """What a UNet family (SD 1.x/2.x, SDXL) adds for its 9-channel inpainting models: detection
    from the config or a file's keys, the pipeline's defaults (``inpaint_defaults``), and the mask
    and masked image's latents as conditioning (:func:`masked_image_condition`)."""

    defaults: ClassVar[dict[str, Any]]
    inpaint_defaults: ClassVar[dict[str, Any]]
    unet: Any
    vae: Any

    @classmethod
    def model_defaults(cls, model: Any, local_files_only: bool | None = None) -> dict[str, Any]:
        """An inpainting UNet (9 channels, from its config or a file's keys) adds its pipeline's
        defaults to the family's."""
        inpainting = unet_is_inpainting(model, local_files_only)
        return {**cls.defaults, **(cls.inpaint_defaults if inpainting else {})}

    @property
    def inpainting(self) -> bool:
        """A 9-channel UNet: [noisy latent (4), mask (1), masked image's latent (4)]."""
        return bool(self.unet.config.in_channels == 2 * self.vae.config.latent_channels + 1)

    def condition_on_image(
        self, c: Any, x: torch.Tensor, mask: torch.Tensor, z_init: torch.Tensor
    ) -> Any:
        """An inpainting UNet: the mask and the masked image's latents in ``c.image``."""
        if self.inpainting:
            c.image = masked_image_condition(self, x, mask, z_init)
        return c


# -- 2x2 patch tokens (FLUX.1 and the families on its packing) ---------------------------------------


def pack(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C) tokens: each 2x2 patch's C x 2 x 2 values."""
    b, c, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w), the inverse of :func:`pack`."""
    b, _, d = tokens.shape
    z = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int) -> torch.Tensor:
    """(h/2 * w/2, 3) rotary position ids of the tokens: (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def has_prefix(keys: dict[str, tuple[int, ...]], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


# -- random-weight parts (``Backbone.build``: bench presets, tests) -----------------------------------


def special_tokens(cfg: dict[str, Any]) -> dict[str, Any]:
    """A CLIP text config with our tokenizer's ids: <|startoftext|> 512, <|endoftext|> 513
    (pooling reads the eos position)."""
    return {
        **cfg,
        "bos_token_id": 512,
        "eos_token_id": 513,
        "pad_token_id": 513,
        "max_position_embeddings": 77,
    }


def unet_and_vae(parts: dict[str, Any]) -> tuple[Any, Any]:
    """A random UNet (``parts["unet"]``) and KL autoencoder (``parts["vae"]``), made in this order
    (under a seed the order fixes the weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    return UNet2DConditionModel(**parts["unet"]), AutoencoderKL(**parts["vae"])


def clip_text(cfg: dict[str, Any], projection: bool = False) -> Any:
    """A random CLIP text encoder of ``cfg`` (with the pooled projection when ``projection``)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(**special_tokens(cfg)))


def t5_encoder(cfg: dict[str, Any]) -> Any:
    """A random T5 encoder of ``cfg`` (SD3's text_encoder_3, FLUX's text_encoder_2)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**cfg))


def clip_tokenizer(workdir: Path) -> Any:
    """A character-level CLIP tokenizer (77 tokens) written under ``workdir``."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(
        str(write_char_vocab(workdir / "clip")), model_max_length=77
    )


def write_char_vocab(folder: Path) -> Path:
    """A character-level CLIP BPE vocabulary (no merges); enough to tokenize any prompt."""
    chars = [chr(c) for c in byte_table()[1]]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def write_bert_vocab(folder: Path) -> Path:
    """A character-level BERT WordPiece vocabulary (``vocab.txt``, 141 ids): BERT's special tokens,
    then every printable ASCII character (lower case) alone and as a ``##`` continuation, so any
    prompt tokenizes into ids in range of any LDMBert."""
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1) if not chr(c).isupper()]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


# A chat template in the shape of Qwen's (ChatML), for the byte-level stand-in below: the
# language-model encoders (Z-Image's Qwen3, Qwen-Image's Qwen2.5-VL, FLUX.2 klein's Qwen3) read the
# prompt as a user turn; a message's content is a string or a list of text parts (FLUX.2 dev).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")


def byte_table() -> tuple[list[int], list[int]]:
    """Byte-level BPE's table (GPT-2's mapping): the 256 bytes, printable ones first, and the
    code points of their printable stand-ins, in that order."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return bs, cs


def byte_chars() -> list[str]:
    """The 256 printable stand-ins of the bytes in byte-level BPE (GPT-2's mapping), by byte."""
    return [chr(c) for _, c in sorted(zip(*byte_table(), strict=True))]


def qwen_tokenizer(workdir: Path) -> Any:
    """A byte-level Qwen2 tokenizer (no merges: one token per byte, ids 0-255; then the specials,
    ids 256-260) with a ChatML template, saved under ``workdir`` and read back: a stand-in for
    the Qwen tokenizers of the language-model text encoders (random weights need ids in range)."""
    from transformers import AutoTokenizer, Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(byte_chars())}
    vocab.update({s: 256 + i for i, s in enumerate(QWEN_SPECIALS)})
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=list(QWEN_SPECIALS[1:]))
    tok.chat_template = CHATML
    folder = workdir / "qwen"
    tok.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def qwen3_encoder(cfg: dict[str, Any]) -> Any:
    """A random Qwen3 language model without its head (Z-Image's text encoder)."""
    from transformers import Qwen3Config, Qwen3Model

    return Qwen3Model(Qwen3Config(**cfg))


class PromptCache:
    """A family's prompt encodings, kept: a language-model text encoder (billions of parameters)
    then runs once per prompt, however many candidates a ranked batch has and however many
    generations the web editor makes with it. Keyed by the prompt and the encoder's identity,
    dtype and device (moving or replacing the encoder starts afresh); the ``size`` most recent."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.entries: dict[tuple[Any, ...], Any] = {}  # insertion order = recency
        self.runs = 0  # encoder runs (tests)

    def get(self, encoder: Any, device: torch.device, prompt: str, encode: Any) -> Any:
        """``encode(prompt)``, computed once per key."""
        key = (prompt, id(encoder), getattr(encoder, "dtype", None), str(device))
        if key in self.entries:
            self.entries[key] = self.entries.pop(key)  # most recent last
            return self.entries[key]
        value = encode(prompt)
        self.runs += 1
        self.entries[key] = value
        while len(self.entries) > self.size:
            self.entries.pop(next(iter(self.entries)))
        return value

    def clear(self) -> None:
        self.entries.clear()


class OneTextEncoder:
    """What a family with one language-model text encoder shares (Chroma, Z-Image, Qwen-Image,
    FLUX.2, Krea 2 and their variants; listed before ``Backbone`` among its bases): its parts,
    frozen in eval mode, ``modules``/``text_encoders``, and the prompt encodings kept in
    ``self.prompts`` (:class:`PromptCache`) around the family's own ``_encode_prompt``."""

    vae: Any
    unet: Any
    device: torch.device
    denoiser_name = "transformer"  # a flow transformer, quantized with its one text encoder
    flow = True
    quantized_parts: ClassVar[dict[str, str]] = {
        "transformer": "diffusers",
        "text_encoder": "transformers",
    }

    def __init__(
        self, vae: Any, transformer: Any, text_encoder: Any, tokenizer: Any, scheduler: Any
    ):
        self.vae, self.unet, self.scheduler = vae, transformer, scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.prompts = PromptCache()
        for m in self.modules().values():
            m.eval().requires_grad_(False)

    def modules(self) -> dict[str, Any]:
        return {"vae": self.vae, "unet": self.unet, "text_encoder": self.text_encoder}

    def text_encoders(self) -> list[Any]:
        return [self.text_encoder]

    def encode_prompt(self, prompt: str) -> Any:
        """The prompt's encoding, computed once (:class:`PromptCache`)."""
        return self.prompts.get(self.text_encoder, self.device, prompt, self._encode_prompt)

    def _encode_prompt(self, prompt: str) -> Any:
        raise NotImplementedError


class FlagDefaults:
    """A family whose defaults follow one flag of the model (step-distilled, turbo): the family's
    ``defaults_for(flag)``, the flag the attribute named ``flag`` of a loaded model, and before
    loading :meth:`flag_of` (``model_index.json``'s ``is_distilled`` unless the family reads it
    otherwise)."""

    flag: ClassVar[str] = "is_distilled"

    @staticmethod
    def defaults_for(flag: bool) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def defaults(self) -> dict[str, Any]:
        return self.defaults_for(bool(getattr(self, self.flag)))

    @classmethod
    def flag_of(cls, model: Any, local_files_only: bool | None = None) -> bool:
        """``model_index.json``'s ``is_distilled``, read without loading the model."""
        name = str(model)
        index = load_cached_first(
            "model", name, lambda local: read_json(name, "model_index.json", local),
            local_files_only,
        )  # fmt: skip
        return bool(index.get("is_distilled"))

    @classmethod
    def model_defaults(cls, model: Any, local_files_only: bool | None = None) -> dict[str, Any]:
        return cls.defaults_for(cls.flag_of(model, local_files_only))


def flow_sigmas(num_steps: int, mu: float) -> dict[str, Any]:
    """The flow pipelines' schedule arguments: sigmas linspace(1, 1/N, N) and the shift ``mu``."""
    return {"sigmas": np.linspace(1.0, 1 / num_steps, num_steps).tolist(), "mu": mu}


def token_shift(scheduler: Any, num_steps: int, tokens: int) -> dict[str, Any]:
    """:func:`flow_sigmas` shifted by mu of the token count where the scheduler shifts
    dynamically (:func:`calculate_shift`, FLUX's fallback 1.15)."""
    return flow_sigmas(num_steps, calculate_shift(scheduler.config, tokens, max_shift=1.15))


# -- Qwen-Image's latents and guidance (Qwen-Image and its variants, Qwen-Image-Edit) -------------


class QwenImageLatents:
    """The Qwen-Image VAE's geometry and normalisation (Qwen-Image, Qwen-Image-Edit, Krea 2): one
    frame of a causal video VAE, per-channel ``latents_mean``/``latents_std`` instead of a scaling
    factor, 16 channels packed in 2x2 patches (:func:`pack`)."""

    vae: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def latent_factor(self) -> int:
        return 2 ** len(self.vae.temperal_downsample)  # 8 (QwenImagePipeline's rule)

    @property
    def native_size(self) -> int:
        return 1024

    @property
    def patch_size(self) -> int:
        return 2

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)  # 16

    @property
    def model_in_channels(self) -> int:
        return self.latent_channels * 4  # packed 2x2 patches

    @staticmethod
    def _stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and std, (1, C, 1, 1, 1)."""
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        return mean.to(like), std.to(like)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 16, h, w): one frame's posterior mean, (z - mean) / std."""
        vae = self.vae
        z = vae.encode(image.to(self.device, vae.dtype)[:, :, None]).latent_dist.mode()
        mean, std = self._stats(vae, z)
        return ((z - mean) / std)[:, :, 0].to(self.dtype)

    @staticmethod
    def decode_with(vae: Any, z: torch.Tensor) -> torch.Tensor:
        """(B, 16, h, w) normalised latents -> (B, 3, H, W) in [-1, 1] (differentiable)."""
        param = next(vae.parameters())
        z = z.to(dtype=param.dtype) if param.device.type == "meta" else z.to(param)
        mean, std = QwenImageLatents._stats(vae, z)
        return vae.decode(z[:, :, None] * std + mean, return_dict=False)[0][:, :, 0]


def norm_rescaled_cfg(both: Any, guidance_scale: float) -> Any:
    """True classifier-free guidance (Ho & Salimans 2022) rescaled to the conditional
    prediction's norm over each 2x2 token's values (Qwen-Image's rule): ``both`` gives the
    negative's and the prompt's predictions for ``cat([z, z])``."""

    def guided(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (B, C, h, w)
        uncond, cond = both(torch.cat([z, z]), t).chunk(2)  # (B, C, h, w) each
        mixed = uncond + guidance_scale * (cond - uncond)
        # The norms on the cells, no packing: a step of a tiny model is 5x faster here.
        return mixed * (token_norm(cond) / token_norm(mixed))

    return guided


def token_norm(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 1, h, w): the norm of each 2x2 token's C x 2 x 2 values (the norm of
    :func:`pack`'s rows), on each of its cells."""
    sq = torch.nn.functional.avg_pool2d(x.square().sum(1, keepdim=True), 2) * 4  # (B, 1, h/2, w/2)
    return sq.sqrt().repeat_interleave(2, -2).repeat_interleave(2, -1)


def branch_context(module: Any, part: str, parts: Sequence[str]) -> Any:
    """Around one of a step's several denoiser calls (the prompt and the negative apart, each at
    its own length): diffusers' ``cache_context(part)``, as the Qwen-Image pipelines call it, so a
    step cache keeps one state per branch instead of mixing them; nothing for a single call."""
    if len(parts) > 1 and hasattr(module, "cache_context"):
        return module.cache_context(part)
    return nullcontext()
