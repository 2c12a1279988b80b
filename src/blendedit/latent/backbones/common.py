"""Helpers several families share, beside the base class (a family never imports a sibling's):
tokenizing, the LCM guidance input, the flow models' timestep shift, and the random-weight text
encoders and character-level tokenizers the families' builders use (``Backbone.build``)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from blendedit.errors import InputError

logger = logging.getLogger(__name__)


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
    """An original-layout (A1111/ComfyUI) UNet with other than 4 input channels is an inpainting
    model: one line (SD 1.x/2.x and SDXL single files)."""
    conv_in = keys.get("model.diffusion_model.input_blocks.0.0.weight")  # (C_out, C_in, 3, 3)
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise InputError(
            f"model: {name!r} has a {conv_in[1]}-channel UNet (an inpainting model); Blended "
            "Latent Diffusion needs a plain text-to-image model with 4 latent channels"
        )


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
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
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


def byte_chars() -> list[str]:
    """The 256 printable stand-ins of the bytes in byte-level BPE (GPT-2's mapping), by byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


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
