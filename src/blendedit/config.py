"""Typed settings of an edit, with named presets; each field described once for every front end.

A field is declared with :func:`setting`: its default, and a :class:`Setting` that says how people
meet it: the ``blendedit edit`` flag, the help text, its range or choices, the group it is shown in,
whether ``blendedit eval`` takes it per method and whether the web editor shows it. The ``edit``
parser (:func:`blendedit.options.add_setting_arguments`), ``eval``'s per-method flags, the web
editor's controls, the batch manifest's keys and replay's checks are generated from these
descriptions, and :meth:`FrameConfig.validate` checks every range and choice from them. Which
methods use a field follows from the config class that declares it (``blendedit.methods``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from blendedit.errors import InputError
from blendedit.models import SCHEDULERS

REGION_MODES = ("auto", "crop", "full")
BACKGROUND_MODES = ("stitch", "decoded", "poisson", "latent", "decoder")
PIXEL_BACKGROUNDS = ("stitch", "decoded", "poisson")  # no decoder to optimise in pixel space
MASK_SHRINK_MODES = ("auto", "on", "off")
BLEND_RULES = ("diffusers", "official")  # see blendedit.latent.schedule
SAMPLERS = ("ddpm", "ddim")
FIT_MODES = ("stretch", "pad")
BLEND_MODES = ("on", "off")  # models trained for inpainting: the paper's blend on top, or alone
RANKERS = ("clip", "pickscore", "hps", "imagereward", "aesthetic", "ensemble")  # frame.judges
JUDGES = RANKERS[:-1]  # the judges an ensemble may weigh
DEFAULT_RANK_WEIGHTS = "clip=1,pickscore=1,hps=1"
MAX_WORKING_SIDE = 4096  # px; the long side the model works at
_C = TypeVar("_C", bound="FrameConfig")
_T = TypeVar("_T")
GROUPS = {  # argparse group titles of ``blendedit edit``, in this order
    "sampling": "sampling (default values come from --preset)",
    "region": "working region (photos of any size)",
    "mask": "mask and background",
    "pixel": "pixel and local-clip methods (Blended Diffusion, SPEC 2)",
    "output": "ranking and output",
    "select": "selection by text or clicks (a segmenter makes the mask)",
}


@dataclass(frozen=True)
class Setting:
    """How the front ends present one config field (see the module docstring).

    ``flag``: the ``blendedit edit`` option (None: the library's only). ``const``: the flag takes
    no value and stores this (``--no-rank`` stores False). ``also``: more flags that store a
    constant, as ``(flag, const, help)``. ``low``/``high``: inclusive range (``low_open``,
    ``high_open``: that end excluded), checked by :func:`check_settings`; ``choices`` likewise. ``why``: the error's wording where
    the range's does not say it. ``parse``: text -> value, for flags and CSV manifests.
    ``label``/``step``/``web_high``: the web editor's control, shown when ``web`` is True.
    ``request``: False where a request to a running server (the HTTP API) may not set it, because
    it changes the server's model for good (``--compile``)."""

    help: str
    flag: str | None = None
    group: str = "sampling"
    const: Any = None
    also: tuple[tuple[str, Any, str], ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    unit: str = ""
    choices: tuple[str, ...] | None = None
    why: str | None = None
    parse: Callable[[str], Any] | None = None
    eval: bool = False
    web: bool = False
    label: str | None = None
    step: float | None = None
    web_high: float | None = None
    request: bool = True

    @property
    def takes_value(self) -> bool:
        return self.const is None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of this setting's range or choices (None: it is fine)."""
        if value is None or isinstance(value, bool):
            return None
        real = isinstance(value, numbers.Real)  # numpy's numbers too
        if real and not isinstance(value, numbers.Integral) and not math.isfinite(value):
            return "must be a finite number"
        if self.choices is not None and value not in self.choices:
            return self.why or f"must be one of {', '.join(self.choices)}"
        if not real:
            return None
        low, high = self.low, self.high
        outside = (low is not None and (value <= low if self.low_open else value < low)) or (
            high is not None and (value >= high if self.high_open else value > high)
        )
        if not outside:
            return None
        if self.why:
            return self.why
        if self.low_open or self.high_open:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"must be in {left}{_num(low)}, {_num(high)}{right}"
        unit = f" {self.unit}" if self.unit else ""
        if high is None:
            return f"must be at least {_num(low)}" if low == 1 else f"must be >= {_num(low)}"
        return f"must be between {_num(low)} and {_num(high)}{unit}"


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


def setting(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its description (:class:`Setting`)."""
    return dataclasses.field(default=default, metadata={"setting": Setting(help=help, **kw)})


@functools.cache
def settings_of(cls: type) -> dict[str, tuple[Setting, Any, Any]]:
    """Field name -> (its Setting, its type hint, its default) for a config class, in order."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: (f.metadata["setting"], hints[f.name], f.default)
        for f in dataclasses.fields(cls)
        if "setting" in f.metadata
    }


def parse_weights(text: str) -> dict[str, float]:
    """An ensemble's ``JUDGE=WEIGHT,...`` (``rank_weights``) -> {judge: weight}; one line naming
    the setting and the value when a judge is unknown, a weight is not a finite number >= 0, or
    every weight is 0. A judge named alone weighs 1."""
    out: dict[str, float] = {}
    for item in str(text).replace(" ", "").split(","):
        if not item:
            continue
        name, _, weight = item.partition("=")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            w = math.nan
        if name not in JUDGES:
            raise InputError(f"rank_weights: {text!r}: unknown judge {name!r}; choose from "
                             f"{', '.join(JUDGES)}")  # fmt: skip
        if not math.isfinite(w) or w < 0:
            raise InputError(f"rank_weights: {text!r}: {name}'s weight must be a number >= 0")
        out[name] = w
    if not any(out.values()):
        raise InputError(f"rank_weights: {text!r}: give at least one judge a weight above 0")
    return out


def check_settings(obj: _T) -> _T:
    """Refuse any field of a dataclass instance of another type than its hint says (a number
    written as text, a list for a number, None where a value is needed) or outside the range or
    choices its description gives (:class:`Setting`), in one line naming the field and the
    value."""
    for name, (s, hint, _) in settings_of(type(obj)).items():
        value = getattr(obj, name)
        why = type_problem(value, hint) or s.problem(value)
        if why is not None:
            raise InputError(f"{name}: {_shown(value)} {why}")
    return obj


def _shown(value: Any, limit: int = 120) -> str:
    """``repr(value)`` for an error line, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` is not of the type a field's ``hint`` names (None: it is): an int field
    takes integers, a float field any real number, a bool field True or False, a text field
    text, ``tuple[int, ...]`` a list or tuple of integers; None only where the hint allows it."""
    args = typing.get_args(hint) if typing.get_origin(hint) is not tuple else ()
    if value is None:
        return None if type(None) in args else "must be given (None is not allowed)"
    kind = value_type(hint)
    if kind is bool:
        ok = isinstance(value, bool | np.bool_)
    elif kind is int:
        ok = _is_int(value)
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
        if ok and isinstance(value, numbers.Integral) and abs(value) > 2**1000:
            return "must be a finite number"  # an int that no float can hold
    elif kind is str:
        ok = isinstance(value, str)
    elif kind is tuple:
        ok = isinstance(value, tuple | list) and all(_is_int(v) for v in value)
    else:
        return None
    if ok:
        return None
    return {
        bool: "must be true or false",
        int: "must be an integer",
        float: "must be a number",
        str: "must be text",
        tuple: "must be a list of integers",
    }[kind]


def value_type(hint: Any) -> type:
    """The plain type a field's hint holds: ``int | None`` -> int, ``tuple[int, ...]`` -> tuple."""
    if typing.get_origin(hint) is tuple:
        return tuple
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return kinds[0]


def _kernels(text: str) -> tuple[int, ...]:
    """``7,5,3`` -> (7, 5, 3)."""
    try:
        return tuple(int(k) for k in str(text).split(",") if k.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated odd sizes like 7,5,3, got {text!r}") from None


# Step caches (blendedit.latent.cache): name -> default value (a threshold or an interval).
CACHE_DEFAULTS = {"first-block": 0.05, "taylorseer": 5.0, "deepcache": 3.0, "magcache": 0.06,
                  "pab": 2.0}  # fmt: skip
CACHE_DEFAULTS["fastercache"] = 2.0  # the attention's interval (diffusers' default)
CACHES = ("none", *CACHE_DEFAULTS)


def parse_cache(text: str) -> tuple[str, float | None]:
    """``NAME[:VALUE]`` -> (name, value or None for the cache's default); one line if bad."""
    name, _, value = str(text).strip().partition(":")
    if name not in CACHES:
        raise InputError(f"cache: {text!r} is unknown; choose one of {', '.join(CACHES)}")
    if not value:
        return name, None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if name == "none" or not math.isfinite(number) or number < 0:
        raise InputError(f"cache: {text!r} needs a number >= 0 after the colon")
    return name, number


@dataclass(frozen=True)
class FrameConfig:
    """Settings of the edit frame, shared by every method (``blendedit.frame``)."""

    num_images: int = setting(
        8, "candidates to generate, one seed each: seed, seed + 1, ...", flag="--num-images",
        low=1, high=1024, label="Results",
    )  # fmt: skip
    invert_mask: bool = setting(
        False, "edit everything outside the mask (e.g. replace the background)",
        flag="--invert-mask", const=True, group="mask",
    )  # fmt: skip
    region: str = setting(
        "auto", "crop = edit a box around the mask at the model's resolution and paste it back; "
        "full = the whole photo at the model's resolution; auto = crop whenever that gives the "
        "mask more pixels", flag="--region", group="region", choices=REGION_MODES,
    )  # fmt: skip
    context: int | None = setting(
        None, "px of context around the mask's box for crop (default: an eighth of its mean side, "
        ">= 16)", flag="--context", group="region", low=0, high=4096, unit="px",
    )  # fmt: skip
    soft_mask: bool = setting(
        False, "grey levels of the mask are per-pixel change strengths (Differential Diffusion; "
        "default: binarised at 50%)", flag="--soft-mask", const=True, group="mask",
    )  # fmt: skip
    mask_grow: int = setting(
        0, "px to grow the mask by (negative: shrink)", flag="--mask-grow", group="mask",
        low=-256, high=256, unit="px",
    )  # fmt: skip
    mask_blur: float = setting(
        0.0, "px (Gaussian sigma) to blur the mask by: a softer paste edge", flag="--mask-blur",
        group="mask", low=0, high=64, unit="px",
    )  # fmt: skip
    rank: bool = setting(
        True, "keep generation order; skips loading CLIP (default: rank candidates by CLIP "
        "similarity of the masked result to the prompt)", flag="--no-rank", const=False,
        group="output",
    )  # fmt: skip
    ranker: str = setting(
        "clip", "the judge that ranks the candidates: clip = CLIP similarity of the masked "
        "result to the prompt (the papers'); pickscore, hps, imagereward = human-preference "
        "reward models (PickScore, HPS v2.1, ImageReward) on the whole working region and the "
        "prompt; aesthetic = the LAION aesthetic predictor on the whole working region; "
        "ensemble = per-batch normalised, weighted sum (--rank-weights)", flag="--rank", group="output", choices=RANKERS,
        web=True, label="Ranker",
    )  # fmt: skip
    rank_weights: str = setting(
        DEFAULT_RANK_WEIGHTS, "ensemble: the judges it weighs, JUDGE=WEIGHT,... (judges: "
        "clip, pickscore, hps, imagereward, aesthetic)", flag="--rank-weights", group="output",
    )  # fmt: skip
    background: str = setting(
        "stitch", "how the photo returns outside the mask (paper 4.2): stitch = its own pixels, "
        "feathered; decoded = raw decoder output; poisson = seamless cloning (colours may "
        "shift); latent = latent optimisation (over-smooth); decoder = per-image decoder "
        "fine-tuning (the paper's choice, slowest)", flag="--background", group="mask",
        choices=BACKGROUND_MODES, label="Background",
    )  # fmt: skip
    feather: int = setting(
        8, "px of soft transition outside the mask for stitch", flag="--feather", group="mask",
        low=0, high=16, unit="px", web=True, label="Feather (px)", step=1,
    )  # fmt: skip
    paste_back: bool = setting(
        False, "after poisson/latent/decoder, put the photo's own pixels back beyond the "
        "feather band", flag="--paste-back", const=True, group="mask",
    )  # fmt: skip
    keep: int | None = setting(
        None, "return only the top K after ranking; background reconstruction runs on those "
        "only", flag="--keep", group="mask",
    )  # fmt: skip
    metrics: bool = setting(
        True, "background PSNR/MSE/SSIM and seam score per result (result.json)"
    )
    batch_size: int = setting(
        8, "candidates per model call", flag="--batch-size", low=1, label="Batch size",
    )  # fmt: skip
    seed: int = setting(
        0, "seed of the first candidate; candidate i uses seed + i", flag="--seed", low=0,
        high=2**63, high_open=True, why="must be in [0, 2**63)",
    )  # fmt: skip

    def replace(self: _C, **changes: Any) -> _C:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InputError(f"config: unknown setting(s) {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def _bad(self, name: str, why: str) -> InputError:
        return InputError(f"{name}: {getattr(self, name)!r} {why}")

    def validate(self: _C) -> _C:
        """Reject values that cannot work, with the field name and value in one line: every
        range and choice from the fields' descriptions, then what relates fields."""
        check_settings(self)
        parse_weights(self.rank_weights)
        if self.keep is not None and not 1 <= self.keep <= self.num_images:
            raise self._bad("keep", f"must be between 1 and num_images ({self.num_images})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EditConfig(FrameConfig):
    """Blended Latent Diffusion settings (SPEC 1; official SD2 script defaults where they exist)."""

    num_inference_steps: int = setting(
        50, "length of the full noise schedule; blend_start skips a part of it", flag="--steps",
        low=1, high=1000, eval=True, label="Steps", web_high=200,
    )  # fmt: skip
    guidance_scale: float = setting(
        7.5, "classifier-free guidance scale", flag="--guidance", low=0, high=100, eval=True,
        label="Guidance", step=0.5, web_high=20,
    )  # fmt: skip
    blend_start: float = setting(
        0.25, "fraction of the schedule skipped: floor(steps * blend_start); 0.25 runs 38 of 50 "
        "steps", flag="--blend-start", low=0, high=1, high_open=True, eval=True,
        label="Blend start", step=0.05,
    )  # fmt: skip
    negative_prompt: str = setting("", "what to steer away from", flag="--negative-prompt")
    scheduler: str = setting(
        "ddim", "noise scheduler", flag="--scheduler", choices=tuple(SCHEDULERS), eval=True,
        why=f"is unknown; choose one of {', '.join(SCHEDULERS)}", label="Scheduler",
    )  # fmt: skip
    blend_rule: str = setting(
        "diffusers", "background level: diffusers (t' with fixed noise, clean at the end) or "
        "official (the official BLD scripts: t with fresh noise every step)",
        flag="--blend-rule", choices=BLEND_RULES,
    )  # fmt: skip
    eta: float = setting(
        0.0, "DDIM eta: 0 = deterministic (schedulers that take it)", flag="--eta", low=0
    )
    size: int | None = setting(
        None, "long side of the working resolution in px, rounded to multiples of 8 (default: "
        "the model's, 512 for SD 2.1-base)", flag="--size", low=64, high=MAX_WORKING_SIDE,
        unit="px", eval=True,
    )  # fmt: skip
    mask_shrink: str = setting(
        "auto", "progressive mask shrinking (paper 4.3): auto = only for masks with thin parts",
        flag="--mask-shrink", group="mask", choices=MASK_SHRINK_MODES, eval=True,
        also=(("--no-mask-shrink", "off", "same as --mask-shrink off"),),
        label="Mask shrinking",
    )  # fmt: skip
    shrink_kernels: tuple[int, ...] = setting(
        (7, 5, 3), "dilation kernels of the shrinking stages, one stage each, then the mask",
        flag="--shrink-kernels", group="mask", parse=_kernels,
    )  # fmt: skip
    recon_steps: int = setting(
        75, "Adam steps for latent/decoder reconstruction (official code: 75)",
        flag="--recon-steps", group="mask", low=0, high=10000, eval=True,
    )  # fmt: skip
    recon_lr: float | None = setting(
        None, "learning rate for latent/decoder (default 0.1 latent, 1e-4 decoder)",
        flag="--recon-lr", group="mask", low=0, high=10, low_open=True,
    )  # fmt: skip
    recon_lambda: float = setting(
        100.0, "weight of the background term for latent/decoder (paper: 100)",
        flag="--recon-lambda", group="mask", low=0,
    )  # fmt: skip
    decode_batch_size: int = setting(
        1, "latents per VAE decode; 1 keeps each result independent", low=1
    )
    blend: str = setting(
        "on", "models trained for inpainting (9-channel SD/SDXL UNets, FLUX.1 Fill): on = the "
        "paper's blend at every step on top of the model's own inpainting, off = the model alone "
        "(its family's default comes from docs/eval-toyworld/inpaint.md); plain models always "
        "blend", flag="--blend", choices=BLEND_MODES, eval=True, web=True, label="Blend",
    )  # fmt: skip
    cache: str = setting(
        "none", "step cache, NAME[:VALUE]: first-block[:THRESHOLD] (transformers, default 0.05), "
        "taylorseer[:INTERVAL] (transformers, 5), deepcache[:INTERVAL] (UNets, 3), "
        "magcache[:THRESHOLD] (FLUX.1, 0.06), pab[:INTERVAL] (transformers, 2), "
        "fastercache[:INTERVAL] (transformers, 2); skipped "
        "calls in result.json", flag="--cache", eval=True,
    )  # fmt: skip
    compile: bool = setting(
        False, "torch.compile the denoiser's repeated blocks (once per editor; the first call "
        "compiles; full-photo working sizes bucketed to 64 px)", flag="--compile", const=True,
        request=False,
    )  # fmt: skip

    def validate(self) -> EditConfig:
        super().validate()
        if int(self.num_inference_steps * self.blend_start) >= self.num_inference_steps:
            raise self._bad("blend_start", "leaves no denoising step")
        if any(k < 1 or k % 2 == 0 for k in self.shrink_kernels):
            raise self._bad("shrink_kernels", "must be odd sizes >= 1")
        parse_cache(self.cache)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["shrink_kernels"] = list(self.shrink_kernels)
        return d


def _weight(default: float, help: str, flag: str, **kw: Any) -> Any:
    """A loss weight of Blended Diffusion: a finite number >= 0."""
    why = "must be a finite number >= 0"
    return setting(default, help, flag=flag, group="pixel", low=0, why=why, **kw)


@dataclass(frozen=True)
class PixelConfig(FrameConfig):
    """Blended Diffusion settings (SPEC 2; defaults are the official script's)."""

    timestep_respacing: str = setting(
        "100", "guided-diffusion respacing of the 1000 training steps", flag="--respacing",
        group="pixel", eval=True,
    )  # fmt: skip
    skip_timesteps: int = setting(
        25, "steps skipped at the start: start from the input noised to step K - skip - 1, run "
        "K - skip steps", flag="--skip-timesteps", group="pixel", low=0, eval=True,
    )  # fmt: skip
    sampler: str = setting(
        "ddpm", "ddpm (official) or ddim", flag="--sampler", group="pixel", choices=SAMPLERS,
        eval=True, web=True, label="Sampler",
    )  # fmt: skip
    eta: float = setting(
        0.0, "DDIM eta: 0 = deterministic (schedulers that take it)", flag="--eta", low=0
    )
    clip_guidance_lambda: float = _weight(
        1000.0, "CLIP loss weight", "--clip-guidance", label="CLIP guidance", step=50,
        web_high=5000,
    )  # fmt: skip
    range_lambda: float = _weight(50.0, "range loss weight on the clean estimate", "--range-lambda")
    aug_num: int = setting(
        8, "augmented copies for the CLIP loss (plus one plain resize)", flag="--aug-num",
        group="pixel", low=0, high=64, eval=True, web=True, label="Augmentations", step=1,
        web_high=32,
    )  # fmt: skip
    local: bool = setting(
        False, "the local CLIP-guided diffusion baseline (no blending, background loss)"
    )
    lpips_sim_lambda: float = _weight(
        1000.0, "local-clip: LPIPS background loss weight", "--lpips-lambda"
    )
    l2_sim_lambda: float = _weight(10000.0, "local-clip: L2 background loss weight", "--l2-lambda")
    fit: str = setting(
        "stretch", "non-square photos: stretch to the model's square (official) or pad (keep "
        "the aspect)", flag="--fit", group="pixel", choices=FIT_MODES, web=True, label="Fit",
    )  # fmt: skip
    batch_size: int = setting(
        4, "candidates per model call", flag="--batch-size", low=1, label="Batch size"
    )
    class_label: int = setting(
        -1, "class-conditional ADM: -1 = a random class at every step (official)", low=-1,
        why="must be -1 (a random class at every step) or a class index",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.timestep_respacing, int) and not isinstance(
            self.timestep_respacing, bool
        ):
            object.__setattr__(self, "timestep_respacing", str(self.timestep_respacing))

    def validate(self) -> PixelConfig:
        """Reject values that cannot work, with the field name and value in one line.
        (The respacing and skip are checked against the model's schedule when an edit runs.)"""
        super().validate()
        if not isinstance(self.timestep_respacing, str):
            raise self._bad("timestep_respacing", "must be a respacing string such as '100'")
        if self.background not in PIXEL_BACKGROUNDS:
            raise self._bad(
                "background", f"must be one of {', '.join(PIXEL_BACKGROUNDS)} (pixel space)"
            )
        return self


PIXEL_PRESETS: dict[str, PixelConfig] = {
    # The official script: 100 respaced steps, skip 25, DDPM, 8 augmentations, ranked batch of 8.
    "default": PixelConfig(),
    # The paper's advice: generate at least 64 and rank them.
    "paper": PixelConfig(num_images=64),
    # The local CLIP-guided diffusion baseline (paper's first algorithm), official loss weights.
    "local": PixelConfig(local=True),
    # One quick look: half the steps (the same starting noise level), 4 candidates.
    "draft": PixelConfig(num_images=4, timestep_respacing="50", skip_timesteps=12),
    # The official script with --model_output_size 512 (512x512_diffusion.pt, class-conditional):
    # its arguments keep their defaults at 512 (respacing 100, skip 25, CLIP lambda 1000, range
    # lambda 50, 8 augmentations, DDPM), and a random ImageNet class is drawn at every step.
    "adm512": PixelConfig(class_label=-1),
}


def pixel_preset(name: str) -> PixelConfig:
    if name not in PIXEL_PRESETS:
        raise InputError(f"preset: unknown {name!r}; choose one of {', '.join(PIXEL_PRESETS)}")
    return PIXEL_PRESETS[name]


PRESETS: dict[str, EditConfig] = {
    # What the official SD2 script does, plus ranking and stitching.
    "default": EditConfig(),
    # The paper's evaluation setting: a ranked batch of 24.
    "paper": EditConfig(num_images=24),
    # Fewer steps with a higher-order solver: about half the time; see docs/speed.md for the caveat.
    "fast": EditConfig(scheduler="dpm++", num_inference_steps=25),
    # One quick look.
    "draft": EditConfig(scheduler="dpm++", num_inference_steps=20, num_images=4),
    # The official SDXL script (text_editing_SDXL.py) as it runs: 1024x1024 (SDXL's native size),
    # 50 DDIM steps, guidance 5, blend start 0.25, batch 4, background re-noised to t with fresh
    # noise, no shrinking, no ranking, the raw decode. For comparison; "default" is better.
    "sdxl-official": EditConfig(
        guidance_scale=5.0,
        num_images=4,
        blend_rule="official",
        mask_shrink="off",
        rank=False,
        background="decoded",
    ),
    # The paper's own setting on its LDM (CompVis/ldm-text2im-large-256, 256x256): DDIM 50 steps,
    # eta 0, guidance 5, a ranked batch of 24, Algorithm 1's blend (t, fresh noise).
    "paper-ldm": EditConfig(guidance_scale=5.0, num_images=24, blend_rule="official"),
    # Few-step distilled models, one preset each (docs/models.md, "Few-step models"). 4 steps, of which
    # blend_start 0.25 skips the first: 3 model calls per candidate, 3 blends (the last pastes the
    # clean source). Guidance 1 is the conditional prediction alone in one pass (diffusers'
    # guidance_scale 0 for Turbo and Lightning).
    # SD-Turbo (stabilityai/sd-turbo): trailing Euler at its 512 px.
    "realtime-sd-turbo": EditConfig(
        scheduler="euler-trailing", num_inference_steps=4, guidance_scale=1.0, size=512
    ),
    # SDXL-Turbo (stabilityai/sdxl-turbo): trailing Euler-a; trained at 512 px, not SDXL's 1024.
    "realtime-sdxl-turbo": EditConfig(
        scheduler="euler-a-trailing", num_inference_steps=4, guidance_scale=1.0, size=512
    ),
    # LCM-LoRA on SD 1.5 or SDXL (--lora latent-consistency/lcm-lora-sdv1-5 or lcm-lora-sdxl):
    # the LCM scheduler, guidance off (the model cards: off, or 1 to 2).
    "realtime-lcm": EditConfig(scheduler="lcm", num_inference_steps=4, guidance_scale=1.0),
    # An LCM-distilled UNet (SimianLuo/LCM_Dreamshaper_v7, latent-consistency/lcm-sdxl): guidance
    # 8 enters the UNet as its w embedding (w = 7), still one pass (Luo et al. 2023, eq. 9).
    "realtime-lcm-distilled": EditConfig(
        scheduler="lcm", num_inference_steps=4, guidance_scale=8.0
    ),
    # SDXL-Lightning, the 4-step model (ByteDance/SDXL-Lightning): trailing Euler, guidance off;
    # its 8-step model wants --steps 8 (a Lightning model runs the step count it was made for).
    "realtime-lightning": EditConfig(
        scheduler="euler-trailing", num_inference_steps=4, guidance_scale=1.0
    ),
    # FLUX.1-schnell: rectified-flow Euler, 4 steps (sigma 1, .75, .5, .25), no guidance (the
    # FLUX family's own defaults for schnell; here to be named).
    "realtime-schnell": EditConfig(
        scheduler="flow-euler", num_inference_steps=4, guidance_scale=1.0
    ),
    # Z-Image-Turbo (Tongyi-MAI/Z-Image-Turbo): rectified-flow Euler, its model card's 9 steps, no
    # guidance (its scale 0; the Z-Image family's own defaults for Turbo; here to be named).
    "realtime-zimage-turbo": EditConfig(
        scheduler="flow-euler", num_inference_steps=9, guidance_scale=1.0
    ),
    # FLUX.2 [klein] 4B / 9B, the step-distilled models: rectified-flow Euler, 4 steps, no
    # guidance (the family's own defaults for a distilled klein; here to be named).
    "realtime-klein": EditConfig(scheduler="flow-euler", num_inference_steps=4, guidance_scale=1.0),
}

# What a preset is for, where its name alone does not say it (``blendedit edit --help``).
PRESET_HELP: dict[str, str] = {
    "realtime-sd-turbo": "SD-Turbo: euler-trailing, 4 steps, guidance 1, 512 px",
    "realtime-sdxl-turbo": "SDXL-Turbo: euler-a-trailing, 4 steps, guidance 1, 512 px",
    "realtime-lcm": "SD or SDXL with an LCM-LoRA: lcm, 4 steps, guidance 1",
    "realtime-lcm-distilled": "an LCM-distilled UNet: lcm, 4 steps, guidance 8 as its w input",
    "realtime-lightning": "SDXL-Lightning 4-step: euler-trailing, 4 steps, guidance 1",
    "realtime-schnell": "FLUX.1-schnell: flow-euler, 4 steps, no guidance",
    "realtime-zimage-turbo": "Z-Image-Turbo: flow-euler, 9 steps, no guidance",
    "realtime-klein": "FLUX.2 [klein] (distilled): flow-euler, 4 steps, no guidance",
}


def preset_on(name: str, base: EditConfig) -> EditConfig:
    """Preset ``name`` applied on ``base`` (e.g. a model family's defaults): only the fields the
    preset sets (those that differ from EditConfig's defaults) replace the base's."""
    p, d = preset(name), EditConfig()
    fields = (f.name for f in dataclasses.fields(p))
    return base.replace(**{k: getattr(p, k) for k in fields if getattr(p, k) != getattr(d, k)})


def preset(name: str) -> EditConfig:
    if name not in PRESETS:
        raise InputError(f"preset: unknown {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve_seeds(
    n: int, seed: int | None, seeds: Sequence[int] | None, generator: torch.Generator | None
) -> list[int]:
    """One seed per candidate: explicit ``seeds``; else ``seed``, seed + 1, ...; else drawn from
    ``generator``. Recorded in each result, so any one result can be regenerated alone."""
    if seeds is not None:
        out = [int(s) for s in seeds]
        if not out or any(not 0 <= s < 2**63 for s in out):
            raise InputError(
                f"seeds: {list(seeds)!r} must be a non-empty list of ints in [0, 2**63)"
            )
        return out
    if seed is None:
        if generator is None:
            raise InputError(
                "seed: pass seed=INT or generator=torch.Generator (no hidden randomness)"
            )
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return [seed + i for i in range(n)]


SELECT_COMBINE = ("union", "subtract")


@dataclass(frozen=True)
class SelectConfig:
    """Settings of a selection made by a segmenter (``blendedit.segment``): how its mask is
    refined and joined to a painted mask before the mask path (grow, blur) every mask takes."""

    mask_combine: str = setting(
        "union", "how a selection (--mask-from, --mask-point, --mask-box) joins --mask: union adds "
        "it, subtract removes it from the painted mask", flag="--mask-combine", group="select",
        choices=SELECT_COMBINE,
    )  # fmt: skip
    mask_fill_holes: bool = setting(
        False, "fill the holes inside the selection", flag="--mask-fill-holes", const=True,
        group="select",
    )  # fmt: skip
    mask_largest: bool = setting(
        False, "keep only the selection's largest connected part", flag="--mask-largest",
        const=True, group="select",
    )  # fmt: skip
    select_threshold: float = setting(
        0.3, "text selection by a detector (GroundingDINO) or SAM 3: the lowest score of a "
        "box or instance kept",
        flag="--select-threshold", group="select", low=0, high=1,
    )  # fmt: skip
    select_preview: int = setting(
        2048, "px: a photo with a longer side is segmented on a preview of this side and the mask "
        "mapped back (segmenters see 1024 px or less)", flag="--select-preview", group="select",
        low=256, high=16384, unit="px",
    )  # fmt: skip
