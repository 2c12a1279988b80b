"""The command line's options, each declared once for every command.

* The options that choose and load models (:data:`OPTIONS`): ``edit``, ``compare-backgrounds``,
  ``serve``, ``replay``, ``batch``, ``eval`` and ``bench`` each take the subset they use through
  :func:`add_model_arguments`; a command may say what an option means for it (``helps``), never
  declare it again. Defaults are the same everywhere: ``None`` is the method's default model
  (``blendedit.models.DEFAULT_MODEL`` for ``latent``), ``auto`` the best device and the dtype that
  suits it. :class:`ModelOptions` is what they said, and loads the editor.
* The settings' flags (:func:`add_setting_arguments`), made from the settings' descriptions in
  :mod:`blendedit.config` (``edit``'s whole parser, ``eval``'s per-method flags, ``batch``'s shared
  flags, ``serve``'s limits).
* ``--engine`` and the Ray options of ``batch`` and ``eval`` (:func:`add_engine_arguments`).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from blendedit.config import GROUPS, Setting, settings_of, value_type
from blendedit.errors import InputError
from blendedit.frame.judges import Judges, parse_judge_models
from blendedit.frame.ranking import DEFAULT_CLIP_MODEL
from blendedit.latent.quantize import QUANTIZE_MODES
from blendedit.methods import (
    METHODS,
    check_memory,
    config_classes,
    load_editor,
    loading_line,
    place,
)
from blendedit.models import DEFAULT_MODEL, DTYPES, parse_device, parse_dtype, quiet_libraries

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
        default="latent",  # choices: the registered methods (blendedit.methods.METHODS)
    ),
    "model": _opt(
        "--model",
        help="latent: hub id, local diffusers folder, or .safetensors file (default: "
        f"{DEFAULT_MODEL}); pixel/local-clip: the ADM checkpoint file "
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
        help="latent, every family but the paper's LDM: apply a LoRA (.safetensors file, folder "
        "or hub id) at SCALE (default 1); repeat for several",
        action="append",
        metavar="FILE_OR_ID[:SCALE]",
    ),
    "lora_dir": _opt(
        "--lora-dir",
        help="latent: a folder whose LoRA weight files (*.safetensors) the page offers by name "
        "(the file name without .safetensors), besides the --lora ones; a client can choose only "
        "these, never a path or hub id",
        default=None,
        metavar="DIR",
    ),
    "offload": _opt(
        "--offload",
        help="latent, smaller GPUs: keep the weights in CPU memory and move each component "
        "(model) or each layer (sequential, least memory, slowest) to the GPU only while it runs",
        choices=OFFLOAD_MODES,
        default=None,
    ),
    "quantize": _opt(
        "--quantize",
        help="latent, 2024-2026 flow families: load the denoiser and the language-model text "
        "encoder quantized through diffusers' backends: nf4 (bitsandbytes), int8 or fp8 "
        "(torchao, weight-only), gguf (--model a .gguf file of the denoiser, --model-config "
        "the model's folder)",
        choices=QUANTIZE_MODES,
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
        help=f"CLIP for ranking (and pixel guidance) (default: {DEFAULT_CLIP_MODEL})",
        default=DEFAULT_CLIP_MODEL,
    ),
    "judge_models": _opt(
        "--judge-model",
        help="a ranking judge's model (--rank): pickscore=ID_OR_FOLDER, hps=FILE (HPS v2.1's "
        ".pt, or owner/repo/file on the hub), aesthetic=FILE (the LAION predictor's .pth), "
        "aesthetic-clip=ID (its CLIP ViT-L/14), clip=ID; repeat for several (default: the "
        "published models)",
        action="append",
        metavar="JUDGE=MODEL",
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
        choices=("auto", *DTYPES),
    ),
    "offline": _opt(
        "--offline",
        help="never reach the hub; use local files and the cache only (HF_HUB_OFFLINE)",
        action="store_true",
    ),
    "segmenter": _opt(
        "--segmenter",
        help="the model that turns --mask-from, --mask-point or --mask-box into a mask: hub id or "
        "folder of CLIPSeg, SAM or SAM 2, or DETECTOR+SAM for GroundingDINO with SAM (default: text "
        "IDEA-Research/grounding-dino-tiny+facebook/sam-vit-base, clicks facebook/sam-vit-base)",
        default=None,
        metavar="ID",
    ),
}
OPTIONS["models_dir"] = _opt(
    "--models-dir",
    help="serve: a folder whose diffusers folders and checkpoint files the page offers in its "
    "model picker, besides the --model ones (loaded one at a time, when chosen)",
    default=None,
    metavar="DIR",
)
SERVE_ONLY = ("lora_dir", "models_dir")  # options only ``serve`` takes
LOADING = tuple(k for k in OPTIONS if k not in SERVE_ONLY)  # every loading option, in this order


def command(
    sub: Any, name: str, help: str, description: str, examples: str | None = None
) -> argparse.ArgumentParser:
    """A ``blendedit`` subcommand: its line in ``blendedit --help``, its description and its
    examples (kept as written)."""
    return sub.add_parser(
        name, help=help, description=description, epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def add_model_arguments(
    parser: argparse.ArgumentParser,
    names: Iterable[str] = LOADING,
    *,
    title: str | None = "model",
    helps: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    repeat: Iterable[str] = (),
) -> Any:
    """Add the options ``names`` (keys of :data:`OPTIONS`) to ``parser``, in a group ``title``.
    ``helps`` says what an option means for this command; ``defaults`` changes a default;
    ``repeat``: options this command takes several times (a list of values, ``serve``'s
    ``--model``)."""
    group = parser.add_argument_group(title) if title else parser
    helps, defaults = helps or {}, defaults or {}
    for name in names:
        opt = OPTIONS[name]
        kwargs = {"dest": name, **opt.kwargs}
        if name == "method":
            kwargs["choices"] = tuple(METHODS)
        if name in defaults:
            kwargs["default"] = defaults[name]
        if name in repeat:
            kwargs["action"] = "append"
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
    lora_dir: str | None = None  # serve: the LoRAs the page offers, besides ``loras``
    offload: str | None = None
    quantize: str | None = None
    no_t5: bool = False
    clip_model: str | None = None
    judge_models: tuple[str, ...] = ()
    lpips_weights: tuple[str, str] | None = None
    device: str = "auto"
    dtype: str = "auto"
    offline: bool = False
    segmenter: str | None = None  # None: blendedit.segment's default for the selection
    models: tuple[str, ...] = ()  # serve: every --model given (``model`` is the first)
    models_dir: str | None = None  # serve: a folder of models the page offers besides --model

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        got = {k: getattr(args, k) for k in OPTIONS if getattr(args, k, None) is not None}
        for key in ("loras", "lpips_weights", "judge_models"):
            if key in got:
                got[key] = tuple(got[key])
        if isinstance(got.get("model"), list):  # serve: --model repeated
            got["models"] = tuple(got["model"])
            got["model"] = got["models"][0]
        return cls(**got)

    def apply_offline(self) -> None:
        """``--offline``: nothing reaches the hub from this process (and the workers it starts)."""
        if self.offline:
            os.environ["HF_HUB_OFFLINE"] = "1"

    def load(self, say: Callable[[str], None] | None = None, **changes: Any) -> Any:
        """The editor these options name (``changes``: other values for some of them), loaded
        and placed on their device, with the one-line errors of
        :func:`blendedit.methods.load_editor` and :func:`~blendedit.methods.place`; ``say``
        hears the line that tells what is being loaded, before the (slow) loading."""
        opts = dataclasses.replace(self, **changes)
        judges = parse_judge_models(opts.judge_models)  # refused before any loading
        opts.apply_offline()
        quiet_libraries()
        device = parse_device(opts.device)
        dtype = parse_dtype(opts.dtype, device)
        check_memory(
            opts.method, opts.model, dtype, device, quantize=opts.quantize,
            model_config=opts.model_config, offload=opts.offload,
        )  # fmt: skip
        editor = load_editor(
            opts.method, opts.model, **opts.loading(), dtype=dtype,
            say=None if say is None else lambda name: say(loading_line(name, dtype, device)),
        )  # fmt: skip
        placed = place(editor, device, dtype, opts.offload)
        if judges:
            placed.judges = Judges(judges)  # loaded when an edit first asks for them (--rank)
        return placed

    def loading(self) -> dict[str, Any]:
        """The keywords of :func:`blendedit.methods.load_editor` these options give."""
        return {
            "model_config": self.model_config, "clip_model": self.clip_model,
            "lpips_weights": self.lpips_weights, "vae": self.vae, "loras": self.loras,
            "drop_t5": self.no_t5, "offload": self.offload, "quantize": self.quantize,
        }  # fmt: skip


def _help(s: Setting, owners: dict[type, Any]) -> str:
    """A setting's help, with the methods that use it (when not all do) and its default(s)."""
    defaults = {m.name: owners[m.config] for m in METHODS.values() if m.config in owners}
    text = s.help
    if defaults and len(defaults) < len(METHODS):
        text = f"{', '.join(defaults)}: {text}"
    defaults = defaults or {"": next(iter(owners.values()))}
    shown = {n: repr_default(d) for n, d in defaults.items() if d is not None}
    if s.takes_value and len(set(shown.values())) == 1:
        text += f" (default {next(iter(shown.values()))})"
    elif s.takes_value and shown:
        text += f" (default: {', '.join(f'{n} {d}' for n, d in shown.items())})"
    return text.replace("%", "%%")


def repr_default(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value) if value != "" else '""'


def setting_fields(
    classes: Iterable[type] | None = None,
) -> dict[str, tuple[Setting, Any, dict[type, Any]]]:
    """Every setting of the given config classes (default: the registered methods'), once: name
    -> (its Setting, its type hint, {config class: default})."""
    out: dict[str, tuple[Setting, Any, dict[type, Any]]] = {}
    for cls in config_classes() if classes is None else classes:
        for name, (s, hint, default) in settings_of(cls).items():
            out.setdefault(name, (s, hint, {}))[2][cls] = default
    return out


def setting_hints() -> dict[str, Any]:
    """Every setting of the registered methods: field name -> its type hint."""
    return {name: hint for name, (_, hint, _) in setting_fields().items()}


def aliases() -> dict[str, str]:
    """``blendedit edit`` flag names (dashes as underscores) of settings whose field is named
    otherwise (``steps`` -> ``num_inference_steps``), from the settings' descriptions."""
    out = {}
    fields = setting_fields()
    for name, (s, _, _) in fields.items():
        flag = (s.flag or "").removeprefix("--").replace("-", "_")
        # a flag named like another field (--rank of ranker, rank the --no-rank field) is no alias
        if s.takes_value and flag and flag != name and flag not in fields:
            out[flag] = name
    return out


def coerce_setting(name: str, value: Any, where: str) -> Any:
    """A value written as text (a manifest's CSV cell, a form field) or JSON as the type of
    setting ``name``; one line naming ``where`` and the setting otherwise."""
    hint = setting_hints()[name]
    args = {hint} if typing.get_origin(hint) is tuple else set(typing.get_args(hint)) or {hint}
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if type(None) in args:
            return None
        raise InputError(f"{where}: {name}: None is not allowed")
    kinds = args - {type(None)}
    try:
        if bool in kinds:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes"):
                return True
            if text in ("0", "false", "no"):
                return False
            raise ValueError
        if int in kinds:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if float in kinds:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if any(typing.get_origin(k) is tuple for k in kinds):
            items = value if isinstance(value, list) else str(value).replace(",", " ").split()
            return tuple(int(v) for v in items)
        if str in kinds:
            if not isinstance(value, str | int):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    raise InputError(f"{where}: {name}: {value!r} is not a valid {hint}")


def _arg_type(s: Setting, hint: Any) -> Callable[[str], Any]:
    parse = s.parse or value_type(hint)

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__  # argparse names it in "invalid int value"
    return convert


def add_setting_arguments(
    parser: argparse.ArgumentParser,
    names: Iterable[str] | None = None,
    classes: Iterable[type] | None = None,
    *,
    with_defaults: bool = False,
) -> dict[str, Any]:
    """Add a flag for every setting that has one (or those in ``names``), grouped as
    ``blendedit edit`` shows them; each stores into its field name, None when not given (the
    preset's value is then used; ``with_defaults``: the class's default instead). Returns the argument groups by their key in
    :data:`blendedit.config.GROUPS`, for a command to add its own options to."""
    wanted = None if names is None else set(names)
    fields = [
        (name, s, hint, owners)
        for name, (s, hint, owners) in setting_fields(classes).items()
        if s.flag is not None and (wanted is None or name in wanted)
    ]
    order = list(GROUPS)
    fields.sort(key=lambda f: order.index(f[1].group) if f[1].group in order else len(order))
    groups: dict[str, Any] = {}
    for name, s, hint, owners in fields:
        if s.group not in groups:
            groups[s.group] = parser.add_argument_group(GROUPS.get(s.group, s.group))
        group, help = groups[s.group], _help(s, owners)
        default = next(iter(owners.values())) if with_defaults else None
        if s.takes_value:
            group.add_argument(
                s.flag, dest=name, type=_arg_type(s, hint), choices=s.choices, help=help,
                default=default,
            )  # fmt: skip
        else:
            group.add_argument(
                s.flag, dest=name, action="store_const", const=s.const, help=help,
                default=default,
            )  # fmt: skip
        for flag, const, also_help in s.also:
            group.add_argument(flag, dest=name, action="store_const", const=const, help=also_help)
    return groups


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a command line gave (field name -> value), the others left to the preset."""
    fields = setting_fields()
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a server's --host) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def engine_group(p: argparse.ArgumentParser) -> Any:
    """The ``engine`` group with --engine and --ray-address (``batch``, ``eval`` and ``api``
    add their own Ray options to it)."""
    e = p.add_argument_group("engine")
    e.add_argument("--engine", choices=["local", "ray"], default="local", help="default local")
    e.add_argument(
        "--ray-address",
        help="Ray cluster (host:6379, ray://host:10001, auto); default: RAY_ADDRESS, else a new "
        "local cluster",
    )
    return e


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """--engine and the Ray options (shared by ``batch`` and ``eval``)."""
    e = engine_group(p)
    e.add_argument(
        "--workers", type=int, help="ray: editors in parallel (default: cluster GPUs / per worker)"
    )
    e.add_argument(
        "--gpus-per-worker",
        type=float,
        help="ray: GPUs per editor, fractions share a GPU (default 1 with GPUs, else 0)",
    )
    e.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="ray: CPUs per editor (default 1)"
    )
    e.add_argument(
        "--worker-start-timeout",
        type=float,
        default=600.0,
        help="ray: seconds the workers may take to start before the run stops (default 600)",
    )


def ray_options(args: argparse.Namespace) -> Any:
    """The Ray options of :func:`add_engine_arguments`; refused without --engine ray."""
    from blendedit.engine import RayOptions

    if args.engine == "local":
        for flag in ("ray_address", "workers", "gpus_per_worker"):
            if getattr(args, flag) is not None:
                raise InputError(f"{flag}: --{flag.replace('_', '-')} needs --engine ray")
    return RayOptions(
        address=args.ray_address,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        actor_wait_s=args.worker_start_timeout,
    )


def select_config_from_args(args: argparse.Namespace) -> Any:
    """The selection's settings (:class:`blendedit.config.SelectConfig`) a command line gave,
    checked against their descriptions."""
    from blendedit.config import SelectConfig, check_settings

    given = {
        k: getattr(args, k) for k in settings_of(SelectConfig) if getattr(args, k, None) is not None
    }
    return check_settings(SelectConfig(**given))


def load_segmenter_for(
    opts: ModelOptions, selection: Any, say: Callable[[str], None] | None = None
) -> Any:
    """The segmenter these options name for ``selection`` (``--segmenter``, else the default for
    a text or for clicks), on their device, loaded the way every model is (one line when it is
    not there)."""
    import torch

    from blendedit.segment import default_segmenter, load_segmenter

    name = opts.segmenter or default_segmenter(selection)
    device = parse_device(opts.device)
    if say is not None:
        say(f"loading segmenter {name} on {device}")
    # float32: the segmenters are small, and their masks then match on every device
    return load_segmenter(name, device, torch.float32, True if opts.offline else None)
