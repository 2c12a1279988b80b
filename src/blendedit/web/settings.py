"""The editor's settings controls: what they are (:func:`control_specs`, one description each) and
how their values become a method and its validated config (:func:`settings_from_ui`).

A :class:`Control` says what the page shows for one setting, independent of Gradio:
:func:`blendedit.web.layout.controls` builds the components from the list, and the handlers read
the values back by the same ``name``. Pure logic: no web imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from blendedit.config import (
    BACKGROUND_MODES,
    PIXEL_PRESETS,
    PRESETS,
    EditConfig,
    PixelConfig,
    check_settings,
    setting,
    settings_of,
    value_type,
)
from blendedit.errors import InputError
from blendedit.io import MAX_PIXELS, MAX_SIDE
from blendedit.web.canvas import PREVIEW_SIDE


@dataclass(frozen=True)
class ServeOptions:
    """Limits of a served editor, each a ``blendedit serve`` flag made from its description;
    the defaults are the library's own caps."""

    max_upload_mb: float = setting(
        200.0, "largest uploaded file in MiB (told in the browser before it is sent)",
        flag="--max-upload-mb", group="server", low=0, high=4096, low_open=True,
    )  # fmt: skip
    max_side: int = setting(
        MAX_SIDE, "longest side of an uploaded photo in px (the library's cap); results come at "
        "its full size", flag="--max-side", group="server", low=64, high=MAX_SIDE, unit="px",
    )  # fmt: skip
    max_megapixels: float = setting(
        MAX_PIXELS / 1e6, "most pixels of an uploaded photo, in millions (the library's cap)",
        flag="--max-megapixels", group="server", low=0.01, high=MAX_PIXELS / 1e6,
    )  # fmt: skip
    preview_side: int = setting(
        PREVIEW_SIDE, "long side in px of the preview the brush paints on; the painting is "
        "mapped back to the full-resolution photo", flag="--preview-side", group="server",
        low=256, high=4096, unit="px",
    )  # fmt: skip
    max_results: int = setting(
        16, "most results per Generate", flag="--max-results", group="server", low=1, high=256
    )
    max_queue: int = setting(
        16, "most Generate requests waiting; more are refused with a message",
        flag="--max-queue", group="server", low=1, high=1024,
    )  # fmt: skip
    max_layers: int = setting(
        4, "most paint layers the editor takes in one request (each no larger than the preview); "
        "more are refused before any is decoded", flag="--max-layers", group="server", low=1,
        high=64,
    )  # fmt: skip
    max_seconds: float = setting(
        600.0, "time limit of one Generate on the device, in seconds: a longer one is stopped "
        "in whatever stage it is in, and the device freed", flag="--max-seconds",
        group="server", low=0, high=86400, low_open=True, unit="s",
    )  # fmt: skip
    keep_models: int = setting(
        1, "models kept loaded at once when the page's model picker switches between them "
        "(--model repeated, --models-dir): 1 lets the current one go before loading the next; "
        "more make switching back instant, at their memory", flag="--keep-models",
        group="server", low=1, high=16,
    )  # fmt: skip
    default_results: int = 4

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    def check(self) -> ServeOptions:
        return check_settings(self)


ControlKind = Literal["slider", "number", "dropdown", "checkbox", "text"]


@dataclass(frozen=True)
class Control:
    """One settings control of the page. ``name``: the key its value is read back by
    (:func:`settings_from_ui`); ``kind``: slider, number (a box), dropdown, checkbox or text;
    ``minimum``/``maximum``/``step``: a slider's range (a number box: ``minimum`` only);
    ``precision``: a number box's decimals (0: whole numbers); ``choices``: a dropdown's;
    ``info``: the help line under the label; ``section``: the accordion, "settings" (open) or
    "advanced" (closed); ``row``: controls next to each other with the same non-empty ``row``
    share a row (empty: the control has the section's width); ``interactive``: False to show a
    value that cannot be changed (None: Gradio's default); ``lines``: a text box's height.
    None leaves Gradio's own default."""

    name: str
    kind: ControlKind
    label: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    precision: int | None = None
    choices: tuple[str, ...] | None = None
    info: str | None = None
    elem_id: str | None = None
    section: Literal["settings", "advanced"] = "settings"
    row: str = ""
    interactive: bool | None = None
    lines: int | None = None


def described(cls: type, field: str, default: Any = None, **changes: Any) -> Control:
    """The control of setting ``name`` of config class ``cls``, from its description
    (:func:`blendedit.config.setting`): label, help line, range or choices, step; ``default``
    (else the class's) and ``changes`` (any :class:`Control` field, ``name`` included) for what
    the page does its own way."""
    s, hint, class_default = settings_of(cls)[field]
    kind: ControlKind = (
        "dropdown" if s.choices else "checkbox" if value_type(hint) is bool
        else "slider" if s.step is not None else "number"
    )  # fmt: skip
    high = s.web_high if s.web_high is not None else s.high
    spec = Control(
        field, kind, s.label or field.replace("_", " ").capitalize(),
        class_default if default is None else default,
        minimum=s.low if kind in ("slider", "number") else None,
        maximum=high if kind == "slider" else None,
        step=s.step, precision=0 if value_type(hint) is int and kind == "number" else None,
        choices=s.choices, info=s.help, section="advanced",
    )  # fmt: skip
    return replace(spec, **changes)


def config_of(kind: str) -> type:
    """The config class of the methods a ``kind`` ("latent" or "pixel") of model runs."""
    from blendedit.methods import get_method

    return get_method("latent" if kind == "latent" else "pixel").config


def web_settings(cls: type) -> list[str]:
    """The settings of ``cls`` described with ``web=True``: shown by their description alone,
    read back by their field name."""
    return [name for name, (s, _, _) in settings_of(cls).items() if s.web]


def control_specs(
    kind: str,
    defaults: Any = None,
    *,
    max_results: int = 16,
    default_results: int = 4,
    method: str | None = None,
    loras: Sequence[str] = (),
    native: int | None = None,
    lora_choices: str = "",
) -> list[Control]:
    """The settings controls of a page over a ``kind`` ("latent" or "pixel") model, in order,
    each from its setting's description where it is one. ``defaults``: the latent model family's
    config defaults (``editor.default_config()``; default :data:`PRESETS` ``["default"]``);
    ``max_results``/``default_results``: the server's cap and default; ``method``: the method
    asked for at start; ``loras``: the LoRAs loaded, as the page names them ("name:scale");
    ``native``: the model's own working size; ``lora_choices``: the LoRAs offered
    (:meth:`LoraChoices.offered`)."""
    latent = kind == "latent"
    d = defaults or PRESETS["default"]
    cls = config_of(kind)
    methods = ("latent",) if latent else ("pixel", "local-clip")
    guidance = (
        described(EditConfig, "guidance_scale", d.guidance_scale, name="guidance",
                  info="how strongly to follow the prompt", elem_id="guidance",
                  section="settings", row="strength")
        if latent else
        described(PixelConfig, "clip_guidance_lambda", name="guidance",
                  info="weight of the CLIP loss", elem_id="guidance", section="settings",
                  row="strength")
    )  # fmt: skip
    shown = {"feather", "sampler", "fit", "aug_num"}  # web=True, placed below
    return [
        described(cls, "num_images", min(default_results, max_results), maximum=max_results,
                  kind="slider", step=1, info="candidates to generate and rank",
                  elem_id="num-images", section="settings", row="run"),
        Control("steps", "slider", "Steps", d.num_inference_steps if latent else 100, 1,
                200 if latent else 1000, 1, elem_id="steps", row="run",
                info="length of the noise schedule" if latent else "respaced steps of 1000"),
        guidance,
        described(EditConfig, "blend_start", d.blend_start, maximum=0.95,
                  info="part of the schedule skipped; higher keeps more of the photo",
                  elem_id="blend-start", section="settings", row="strength"),
        Control("seed", "number", "Seed", 0, 0, precision=0, info="result i uses seed + i",
                elem_id="seed", row="seed"),
        Control("random_seed", "checkbox", "New random seed each time", True,
                elem_id="random-seed", row="seed"),
        Control("method", "dropdown", "Method", method if method in methods else methods[0],
                choices=methods, interactive=not latent, elem_id="method", row="method",
                info="set by the loaded model" if latent else "blended or local CLIP-guided"),
        described(cls, "background", "stitch",
                  choices=BACKGROUND_MODES if latent else ("stitch", "decoded"),
                  info="how the photo returns outside the mask", elem_id="background",
                  section="settings", row="method"),
        *(_latent_specs(d, loras, native, lora_choices) if latent else _pixel_specs()),
        described(cls, "feather", d.feather, info="soft band outside the mask (stitch)",
                  row="band"),
        described(cls, "batch_size", 1, maximum=16, kind="slider", step=1,
                  elem_id="batch-size", row="band",
                  info="results per model call; 1 replays bit for bit, more is faster on a GPU"),
        *(described(cls, name) for name in web_settings(cls) if name not in shown),
    ]  # fmt: skip


def _latent_specs(
    d: Any, loras: Sequence[str], native: int | None, lora_choices: str
) -> list[Control]:
    """The advanced controls only a latent model has."""
    return [
        Control("negative_prompt", "text", "Negative prompt", elem_id="negative",
                section="advanced"),
        Control("loras", "text", "LoRAs", "\n".join(loras), lines=2, elem_id="loras",
                info="one per line: NAME[:SCALE] (SD 1.x/2.x and SDXL); empty: none; "
                + (lora_choices or LoraChoices().offered()),
                section="advanced"),
        described(EditConfig, "scheduler", d.scheduler, info=None, row="schedule"),
        described(EditConfig, "mask_shrink", d.mask_shrink, info="auto: for thin masks only",
                  row="schedule"),
        Control("size", "number", "Working size (px)", 0, 0, precision=0, elem_id="size",
                info=f"long side the model works at; 0 = the model's own ({native})",
                section="advanced"),
    ]  # fmt: skip


def _pixel_specs() -> list[Control]:
    """The advanced controls only a pixel (Blended Diffusion) model has."""
    return [
        described(PixelConfig, "sampler", info=None, row="sampler"),
        described(PixelConfig, "fit", info=None, row="sampler"),
        described(PixelConfig, "aug_num", info=None),
    ]


def read_number(ui: Mapping[str, Any], key: str, label: str, cast: Callable[[Any], Any]) -> Any:
    """``ui[key]`` as a number (``cast``); a missing or unreadable one is one line."""
    v = ui.get(key)
    try:
        if v is None or v == "":
            raise ValueError
        return cast(v)
    except (TypeError, ValueError):
        raise InputError(f"{label}: {v!r} is not a number") from None


def settings_from_ui(
    kind: str, ui: Mapping[str, Any], max_results: int, base: Any = None
) -> tuple[str, Any]:
    """The method and its validated config from the settings controls' values (by name);
    ``base``: the latent model family's defaults (``editor.default_config()``)."""
    n = read_number(ui, "num_images", "results", int)
    if not 1 <= n <= max_results:  # the server's cap, tighter than the config's range
        raise InputError(f"results: {n} must be between 1 and {max_results}")
    steps = read_number(ui, "steps", "steps", int)
    blend = read_number(ui, "blend_start", "blend start", float)
    common = {
        "num_images": n,
        "background": ui.get("background") or "stitch",
        "batch_size": read_number(ui, "batch_size", "batch size", int),
        "invert_mask": bool(ui.get("invert")),
        "metrics": False,  # background metrics are not shown in the page: seconds saved per run
    }
    cls = config_of(kind)
    common.update(_described_values(cls, ui))
    if kind == "latent":
        size = ui.get("size")
        cfg = (base or PRESETS["default"]).replace(
            **common,
            num_inference_steps=steps,
            guidance_scale=read_number(ui, "guidance", "guidance", float),
            blend_start=blend,
            negative_prompt=str(ui.get("negative_prompt") or ""),
            scheduler=ui.get("scheduler") or "ddim",
            size=None if size in (None, "", 0) else read_number(ui, "size", "working size", int),
            mask_shrink=ui.get("mask_shrink") or "auto",
        )
        return "latent", cfg.validate()
    method = ui.get("method") or "pixel"
    if method not in ("pixel", "local-clip"):
        raise InputError(f"method: {method!r} needs a different model; this one runs pixel")
    # Steps and blend start are the page's; the config holds what they become (a respacing
    # string and a skip), so they are checked here, before they are turned into it.
    if not 1 <= steps <= 1000:
        raise InputError(f"steps: {steps} must be between 1 and 1000")
    if not 0 <= blend < 1:
        raise InputError(f"blend start: {blend} must be in [0, 1)")
    cfg = PIXEL_PRESETS["local" if method == "local-clip" else "default"].replace(
        **common,
        timestep_respacing=str(steps),
        skip_timesteps=min(steps - 1, int(steps * blend)),
        clip_guidance_lambda=read_number(ui, "guidance", "CLIP guidance", float),
    )
    return method, cfg.validate()


def _described_values(cls: type, ui: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the controls made from descriptions alone (``web=True``), by field name:
    numbers read as the field's type, a missing choice left at the config's value."""
    out: dict[str, Any] = {}
    for name in web_settings(cls):
        s, hint, _ = settings_of(cls)[name]
        if s.choices is not None or value_type(hint) in (str, bool):
            if ui.get(name) not in (None, ""):
                out[name] = value_type(hint)(ui[name])
        else:
            out[name] = read_number(ui, name, name.replace("_", " "), value_type(hint))
    return out


LORA_NAME_BAD = ":,\n\r"  # a name holds none of these (the field's separators)
MAX_LORAS = 16  # LoRAs applied at once from the page


def lora_name(source: str) -> str:
    """The name the page shows for an operator's LoRA: a file's name without ``.safetensors``,
    a folder's name, or a hub id as it is."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.name.removesuffix(".safetensors")
    if path.is_dir():
        return path.resolve().name
    return source


@dataclass(frozen=True)
class LoraChoices:
    """The LoRAs a page may apply, each by its name: ``sources`` maps a name to the file, folder
    or hub id the operator gave (``--lora``, ``--lora-dir``). The page's field takes only these
    names (``NAME[:SCALE]``), never a path or hub id; what it shows and says names no path."""

    sources: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_options(cls, loras: Sequence[str] = (), lora_dir: str | None = None) -> LoraChoices:
        """The ``--lora`` LoRAs (``FILE_OR_ID[:SCALE]``, the scale left out) and the
        ``*.safetensors`` files of ``--lora-dir``; two of the same name are one line."""
        from blendedit.latent.lora import parse_lora_spec

        found = [("lora", parse_lora_spec(t).source) for t in loras]
        if lora_dir is not None:
            folder = Path(lora_dir).expanduser()
            if not folder.is_dir():
                raise InputError(f"lora_dir: {lora_dir} is not a folder")
            files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
            found += [("lora_dir", str(p.resolve())) for p in files]
        sources: dict[str, str] = {}
        for flag, source in found:
            name = lora_name(source)
            if any(c in name for c in LORA_NAME_BAD) or not name.strip():
                raise InputError(
                    f"{flag}: {source}: a LoRA's name may not be empty or hold ':' or ','; "
                    "rename it"
                )
            if sources.get(name, source) != source:
                raise InputError(
                    f"{flag}: two LoRAs are named {name!r} ({sources[name]} and {source}); "
                    "rename one"
                )
            sources[name] = source
        return cls(sources)

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    def offered(self) -> str:
        """What the page's help line says is offered."""
        if not self.sources:
            return "none are offered by this server (its --lora and --lora-dir options)"
        return "offered: " + ", ".join(self.names)

    def parse(self, text: Any) -> list[str]:
        """The page's field, one ``NAME[:SCALE]`` per line (or comma), as the "source:scale"
        the editor applies; a name that is not offered, or a bad scale, is one line."""
        items = [t.strip() for t in str(text or "").replace(",", "\n").splitlines() if t.strip()]
        if len(items) > MAX_LORAS:
            raise InputError(f"lora: {len(items)} LoRAs; at most {MAX_LORAS} apply at once")
        return [self._one(item) for item in items]

    def _one(self, item: str) -> str:
        shown = item if len(item) <= 60 else item[:57] + "..."
        name, scale = item, 1.0
        if item not in self.sources and ":" in item:
            head, _, tail = item.rpartition(":")
            name = head.strip()
            try:
                scale = float(tail)
            except ValueError:
                raise InputError(
                    f"lora: {shown!r}: {tail.strip()[:20]!r} after the ':' is not a scale "
                    "(a number)"
                ) from None
            if not math.isfinite(scale):
                raise InputError(f"lora: {shown!r}: the scale must be a finite number")
        if name not in self.sources:
            raise InputError(f"lora: {shown!r} is not a LoRA of this server; {self.offered()}")
        return f"{self.sources[name]}:{scale:g}"

    def shown(self, loaded: Sequence[str]) -> list[str]:
        """The editor's applied LoRAs ("source:scale") as the page shows them, "name:scale"."""
        by_source = {v: k for k, v in self.sources.items()}
        out = []
        for spec in loaded:
            source, _, scale = spec.rpartition(":")
            out.append(f"{by_source.get(source, lora_name(source))}:{scale}")
        return out
