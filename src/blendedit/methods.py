"""The editing methods, by name, in one registry: what configures each (its config class and
presets), which settings it fixes itself, and how its editor loads. ``blendedit edit``, ``serve``,
``replay``, ``batch`` and ``eval`` read the method names, settings and loaders from here; placing
an editor on a device, with a one-line error when it does not fit, is here too."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from blendedit.config import (
    PIXEL_PRESETS,
    PRESETS,
    EditConfig,
    FrameConfig,
    PixelConfig,
    preset_on,
)
from blendedit.errors import InputError
from blendedit.models import DEFAULT_MODEL


@dataclass(frozen=True)
class Method:
    """One editing method: ``load(model, **options)`` gives its editor on the CPU;
    ``default_preset(model)`` names the preset used when none is asked for; ``fixed`` are the
    settings the method sets itself; ``options`` the model options it takes beyond the common
    ones (``model``, ``model_config``, ``clip_model``, ``dtype``); ``model_required`` says what
    ``--model`` must name where the method has no default model."""

    name: str
    help: str
    config: type[FrameConfig]
    presets: Mapping[str, FrameConfig]
    load: Callable[..., Any]
    default_preset: Callable[[str | None], str] = lambda model: "default"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    options: tuple[str, ...] = ()
    model_required: str | None = None  # what --model must name when there is no default
    needs_clip: bool = False  # CLIP guides it (loaded even when the results are not ranked)

    def preset_name(self, name: str | None, model: str | None = None) -> str:
        """The preset asked for, else the one this method (and its model) defaults to."""
        return name or self.default_preset(model)

    def preset(self, name: str | None, model: str | None = None) -> FrameConfig:
        name = self.preset_name(name, model)
        if name not in self.presets:
            raise InputError(
                f"preset: unknown {name!r} for --method {self.name}; choose one of "
                f"{', '.join(self.presets)}"
            )
        return self.presets[name]

    def settings(
        self,
        given: Mapping[str, Any],
        preset: str | None = None,
        *,
        base: FrameConfig | None = None,
        model: str | None = None,
        key: str = "--method",
    ) -> Any:
        """The method's config: the preset (on ``base``: a model family's defaults, once known),
        overridden by ``given`` (field name -> value), the method's own fixed settings, checked.
        A field of another method is one line (naming the method as ``key`` does), not
        silently ignored."""
        mine = {f for f in self.config.__dataclass_fields__}
        for name in given.keys() - mine:
            users = [m.name for m in METHODS.values() if name in m.config.__dataclass_fields__]
            other = " and ".join(users) or "no method"
            raise InputError(f"{name}: applies to {key} {other} only, not {self.name}")
        if base is not None and isinstance(base, EditConfig):
            cfg = preset_on(preset or "default", base)
        else:
            cfg = self.preset(preset, model)
        if type(cfg) is not self.config:  # a preset of a base class, on this method's config
            cfg = self.config(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
        return cfg.replace(**given, **self.fixed).validate()


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add (or replace) a method; every front end lists and loads it from then on."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise InputError(f"method: {name!r} is unknown; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def config_classes() -> list[type[FrameConfig]]:
    """The config classes of the registered methods, each once, in registration order."""
    return list(dict.fromkeys(m.config for m in METHODS.values()))


def _load_latent(
    model: str | None,
    *,
    model_config: str | None = None,
    clip_model: str | None = None,
    dtype: Any = None,
    vae: str | None = None,
    loras: Sequence[str] = (),
    drop_t5: bool = False,
    quantize: str | None = None,
    **_: Any,
) -> Any:
    from blendedit.latent.pipeline import BlendedLatentDiffusion

    return BlendedLatentDiffusion.from_pretrained(
        model or DEFAULT_MODEL, clip_model=clip_model, torch_dtype=dtype,
        model_config=model_config, vae=vae, loras=loras, drop_t5=drop_t5, quantize=quantize,
    )  # fmt: skip


def _load_pixel(
    model: str | None,
    *,
    model_config: str | None = None,
    clip_model: str | None = None,
    lpips_weights: Sequence[str] | None = None,
    dtype: Any = None,
    **_: Any,
) -> Any:
    from blendedit.pixel.pipeline import BlendedDiffusion

    return BlendedDiffusion.from_pretrained(
        model,
        model_config=model_config,
        clip_model=clip_model,
        lpips_weights=tuple(lpips_weights) if lpips_weights else None,  # type: ignore[arg-type]
        torch_dtype=dtype,
    )


def _pixel_preset(model: str | None) -> str:
    from blendedit.pixel.pipeline import default_preset

    return default_preset(model)  # adm512 for a class-conditional ADM


LATENT_OPTIONS = ("vae", "loras", "offload", "no_t5", "quantize")
ADM_CHECKPOINT = (
    "the ADM checkpoint file (256x256_diffusion_uncond.pt from openai/guided-diffusion)"
)
register_method(
    Method(
        "latent",
        "Blended Latent Diffusion on a text-to-image latent model (default)",
        EditConfig,
        PRESETS,
        _load_latent,
        options=LATENT_OPTIONS,
    )
)
register_method(
    Method(
        "pixel",
        "Blended Diffusion on OpenAI's ADM with CLIP guidance",
        PixelConfig,
        PIXEL_PRESETS,
        _load_pixel,
        default_preset=_pixel_preset,
        options=("lpips_weights",),
        model_required=ADM_CHECKPOINT,
        needs_clip=True,
    )
)
register_method(
    Method(
        "local-clip",
        "the local CLIP-guided diffusion baseline (no blending, background loss)",
        PixelConfig,
        PIXEL_PRESETS,
        _load_pixel,
        default_preset=_pixel_preset,
        fixed={"local": True},
        options=("lpips_weights",),
        model_required=ADM_CHECKPOINT,
        needs_clip=True,
    )
)


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
    quantize: str | None = None,
) -> Any:
    """The editor of ``method`` (a key of :data:`METHODS`), loaded on the CPU. An option the
    method does not take is one line; ``offload`` is applied by :func:`place`. ``say(name)`` is
    called once the inputs are checked, before the (slow) loading."""
    m = get_method(method)
    given = {"vae": vae, "loras": loras, "offload": offload, "no_t5": drop_t5}
    given["lpips_weights"] = lpips_weights
    given["quantize"] = quantize
    flags = {"loras": "lora"}
    for name, value in given.items():
        if value and name not in m.options:
            users = [k for k, v in METHODS.items() if name in v.options]
            raise InputError(
                f"{flags.get(name, name)}: applies to --method {' and '.join(users)} only, "
                f"not {method}"
            )
    if m.model_required and model is None:
        raise InputError(f"model: --method {method} needs --model with {m.model_required}")
    if say is not None:
        say(model or DEFAULT_MODEL)
    return m.load(
        model, model_config=model_config, clip_model=clip_model, lpips_weights=lpips_weights,
        dtype=dtype, vae=vae, loras=loras, drop_t5=drop_t5, quantize=quantize,
    )  # fmt: skip


def check_memory(
    method: str, model: str | None, dtype: Any, device: Any, *, quantize: str | None = None,
    model_config: str | None = None, offload: str | None = None,
) -> None:  # fmt: skip
    """Before loading a latent model onto a GPU: one line with the memory its weights need in
    ``dtype`` or the ``quantize`` mode when the GPU has less free (``--offload``: no check)."""
    if method != "latent" or offload or getattr(device, "type", "cpu") != "cuda":
        return
    from blendedit.latent.backbones import weight_memory
    from blendedit.latent.quantize import check_fits

    need = weight_memory(model or DEFAULT_MODEL, dtype, quantize, model_config)
    if need is not None:
        label = quantize or str(dtype).removeprefix("torch.")
        check_fits(str(model or DEFAULT_MODEL), need, label, device)


def loading_line(name: str | None, dtype: Any, device: Any) -> str:
    """What the command line says before a load: ``loading NAME (DTYPE on DEVICE) ...``."""
    return f"loading {name} ({str(dtype).removeprefix('torch.')} on {device}) ..."


def can_drop_t5(family: str) -> bool:
    """Whether a latent model family runs without its T5 encoder (``--no-t5``)."""
    from blendedit.latent.backbones import FAMILIES

    return family in FAMILIES and FAMILIES[family].can_drop_t5


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
        if can_drop_t5(getattr(editor, "family", "")):
            hints.append("--no-t5")
        if dtype not in (torch.float16, torch.bfloat16):
            hints.append("--dtype fp16")
        tried = f"; try {' or '.join(hints)}" if hints else ""
        raise InputError(
            f"device: the model's weights ({size / 2**30:.1f} GiB in "
            f"{str(dtype).removeprefix('torch.')}) do not fit on {device}{tried}"
        ) from None
