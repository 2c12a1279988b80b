"""An editor for a method by name, as ``blendedit edit``, ``serve``, ``replay`` and ``batch`` load
it: the method's own checks (which flags apply, what it needs) in one place, and placing it on a
device with a one-line error when it does not fit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from blendedit.errors import InputError
from blendedit.models import DEFAULT_MODEL


def load_editor(
    method: str,
    model: str | None = None,
    *,
    model_config: str | None = None,
    clip_model: str | None = None,
    lpips_weights: Sequence[str] | None = None,
    dtype: Any = None,
    vae: str | None = None,
    loras: Sequence[str] = (),
    drop_t5: bool = False,
    offload: str | None = None,
    say: Callable[[str], None] | None = None,
) -> Any:
    """The editor of ``method`` ("latent", "pixel", "local-clip"), loaded on the CPU. ``vae``,
    ``loras``, ``drop_t5`` and ``offload`` (applied by :func:`place`) are the latent method's
    only; the pixel methods need ``model``, an ADM checkpoint file. ``say(name)`` is called
    once the inputs are checked, before the (slow) loading."""
    if method == "latent":
        from blendedit.latent.pipeline import BlendedLatentDiffusion

        if say is not None:
            say(model or DEFAULT_MODEL)
        return BlendedLatentDiffusion.from_pretrained(
            model or DEFAULT_MODEL, clip_model=clip_model, torch_dtype=dtype,
            model_config=model_config, vae=vae, loras=loras, drop_t5=drop_t5,
        )  # fmt: skip
    for flag, value in (("vae", vae), ("lora", loras), ("offload", offload), ("no_t5", drop_t5)):
        if value:
            raise InputError(f"{flag}: applies to --method latent only, not {method}")
    if model is None:
        raise InputError(
            f"model: --method {method} needs --model with the ADM checkpoint file "
            "(256x256_diffusion_uncond.pt from openai/guided-diffusion)"
        )
    from blendedit.pixel.pipeline import BlendedDiffusion

    if say is not None:
        say(model)
    return BlendedDiffusion.from_pretrained(
        model,
        model_config=model_config,
        clip_model=clip_model,
        lpips_weights=tuple(lpips_weights) if lpips_weights else None,  # type: ignore[arg-type]
        torch_dtype=dtype,
    )


def loading_line(name: str | None, dtype: Any, device: Any) -> str:
    """What the command line says before a load: ``loading NAME (DTYPE on DEVICE) ...``."""
    return f"loading {name} ({str(dtype).removeprefix('torch.')} on {device}) ..."


def place(editor: Any, device: Any, dtype: Any, offload: str | None = None) -> Any:
    """The editor on ``device`` (or offloaded to it); a model too large for the device is one
    line with its size and what to try, never a CUDA traceback."""
    import torch

    try:
        return editor.enable_offload(offload, device) if offload else editor.to(device)
    except torch.OutOfMemoryError:
        backbone = getattr(editor, "backbone", None)  # latent; the pixel method has one model
        modules = backbone.modules().values() if backbone is not None else [editor.model]
        size = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
        hints = ["--offload model", "--offload sequential"] if backbone is not None else []
        if getattr(editor, "family", "") == "sd3":
            hints.append("--no-t5")
        if dtype not in (torch.float16, torch.bfloat16):
            hints.append("--dtype fp16")
        tried = f"; try {' or '.join(hints)}" if hints else ""
        raise InputError(
            f"device: the model's weights ({size / 2**30:.1f} GiB in "
            f"{str(dtype).removeprefix('torch.')}) do not fit on {device}{tried}"
        ) from None
