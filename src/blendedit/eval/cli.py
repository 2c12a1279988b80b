"""``blendedit eval``: the paper's quantitative evaluation of every method on the same inputs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from blendedit.config import PIXEL_PRESETS, EditConfig, PixelConfig, preset_on, settings_of
from blendedit.errors import BlendEditError, InputError
from blendedit.eval.benchmarks import BENCHMARKS
from blendedit.eval.methods import DEFAULT_METHODS, METHODS, EvalModels
from blendedit.eval.metrics import DEFAULT_CLASSIFIER, DEFAULT_SCORE_CLIP_MODEL
from blendedit.eval.protocol import DEFAULT_MAX_SIDE
from blendedit.frame.ranking import DEFAULT_CLIP_MODEL
from blendedit.latent.backbones import family_defaults
from blendedit.models import DEFAULT_MODEL, quiet_libraries
from blendedit.options import (
    add_engine_arguments,
    add_model_arguments,
    add_setting_arguments,
    command,
    given_settings,
    ray_options,
    setting_fields,
)

EXAMPLES = """\
examples:
  # the paper's protocol on a GPU: 50 inputs, every method, recommended batches
  blendedit eval --images photos/ --out eval-run --pixel-model 256x256_diffusion_uncond.pt \\
      --lpips-weights alexnet.pth alex_lin.pth
  # a quick look: 5 inputs, small batches
  blendedit eval --images photos/ --methods latent,diffusers-inpaint --out quick --limit 5 --batch 4

Run it again with the same arguments to resume: finished inputs are read back, never remade.
Outputs in --out: report.md, report.json, precision_vs_time.png, grid.png, predictions/.
"""


def _methods(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(bad) or text!r}; choose from {', '.join(METHODS)}"
        )
    return names


def _batch(text: str) -> int | dict[str, int]:
    """``8`` for every method, or ``latent=24,pixel=16``."""
    try:
        if "=" not in text:
            return int(text)
        out = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            if name.strip() not in METHODS:
                raise argparse.ArgumentTypeError(f"unknown method {name.strip()!r} in --batch")
            out[name.strip()] = int(value)
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or method=number,... like latent=24,pixel=16; got {text!r}"
        ) from None


def _model_arguments(p: argparse.ArgumentParser) -> None:
    """The models the methods and the metrics load (the loading options shared with every
    command, and eval's own)."""
    g = add_model_arguments(
        p, ("model", "model_config"), title="models",
        helps={
            "model": f"the latent methods' model (default {DEFAULT_MODEL})",
            "model_config": "for a single-file checkpoint offline: its configs",
        },
    )  # fmt: skip
    g.add_argument(
        "--pixel-model", help="ADM checkpoint for pixel and local-clip (without it: skipped)"
    )
    g.add_argument("--pixel-model-config", help="guided-diffusion JSON (default: the 256 uncond)")
    g.add_argument(
        "--inpaint-model",
        help="a model trained for inpainting (9-channel SD/SDXL UNet, FLUX.1 Fill) for the "
        "inpaint-model method (without it: skipped)",
    )
    add_model_arguments(
        p, ("clip_model",), title=None,
        helps={"clip_model": f"CLIP for ranking and pixel guidance (default {DEFAULT_CLIP_MODEL}); "
               "'none': unranked"},
    )  # fmt: skip
    g.add_argument(
        "--score-clip-model",
        default=DEFAULT_SCORE_CLIP_MODEL,
        help=f"CLIP for the CLIP score (default {DEFAULT_SCORE_CLIP_MODEL}); 'none': no CLIP score",
    )
    g.add_argument(
        "--classifier",
        default=DEFAULT_CLASSIFIER,
        help=f"ImageNet classifier from transformers for precision (default {DEFAULT_CLASSIFIER}; "
        "or a toy-world classifier.safetensors beside its classifier.py, whose 30 captions are "
        "the prompts; "
        "the paper used EfficientNet without naming the variant)",
    )
    g.add_argument(
        "--lpips-weights",
        nargs=2,
        metavar=("TRUNK", "LIN"),
        help="LPIPS trunk (torchvision alexnet/vgg16 state dict) and lin (lpips v0.1) files for "
        "diversity and background LPIPS; without them those two are reported as unavailable",
    )
    g.add_argument("--lpips-net", choices=["alex", "vgg"], default="alex", help="default alex")
    g.add_argument(
        "--local-lpips-weights",
        nargs=2,
        metavar=("TRUNK", "LIN"),
        help="local-clip's LPIPS background loss (VGG); without them it uses the L2 term only",
    )
    add_model_arguments(p, ("judge_models", "device", "dtype", "offline"), title=None,
                        helps={"judge_models": "--benchmark's judges: imagereward=, hps=, "
                               "aesthetic=, aesthetic-clip= (see blendedit edit --help)"})  # fmt: skip


EVAL_HELP = "the paper's evaluation: precision, diversity, background fidelity, CLIP score, time"
EVAL_DESCRIPTION = (
    "Blended Latent Diffusion paper, section 5 and appendix C.1: per photo a random "
    "rectangle (sides uniform in [dim/5, dim/2]) and a random ImageNet class name as the "
    "prompt; each method generates its recommended batch (latent 24, pixel 64); "
    "precision = the prompt's class in an ImageNet classifier's top 5 for the masked "
    "prediction (batch average and top-ranked only); diversity = mean pairwise LPIPS of "
    "the correct masked predictions; plus background PSNR/MSE/SSIM/LPIPS, CLIP score and "
    "time. Resumable: predictions are cached in --out."
)


def add_parser(sub: Any) -> None:
    p = command(sub, "eval", EVAL_HELP, EVAL_DESCRIPTION, EXAMPLES)
    p.add_argument(
        "--images", help="folder of photos (*.mask*.* files skipped); the paper's protocol"
    )
    p.add_argument(
        "--benchmark",
        choices=BENCHMARKS,
        help="instead of the paper's protocol: a public benchmark in its published layout "
        "(--data), scored with BrushBench's metrics; writes BrushBench's table",
    )
    p.add_argument("--data", help="--benchmark: the benchmark's folder (you download it)")
    p.add_argument(
        "--mask-key",
        default="inpainting_mask",
        help="brushbench/editbench: the mapping file's mask (inpainting_mask, the default, or "
        "outpainting_mask)",
    )
    p.add_argument(
        "--methods",
        type=_methods,
        default=DEFAULT_METHODS,
        help=f"comma-separated, from: {', '.join(METHODS)} (default: all but inpaint-model)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="run folder: new, or an earlier run of the same inputs to resume",
    )
    p.add_argument("--n-images", type=int, default=50, help="inputs in the protocol (default 50)")
    p.add_argument(
        "--limit", type=int, help="evaluate only the first N inputs (quick runs; resumable)"
    )
    p.add_argument(
        "--batch",
        type=_batch,
        help="predictions per input: N for every method or method=N,... "
        "(default: recommended, latent* and diffusers-inpaint 24, pixel and local-clip 64)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the whole protocol (default 0)")
    p.add_argument(
        "--max-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        help=f"photos larger than this are downscaled first (default {DEFAULT_MAX_SIDE} px)",
    )
    p.add_argument(
        "--no-single-timing",
        action="store_false",
        dest="time_single",
        help="skip the extra one-prediction run per input that Table 2's single-image time needs",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")

    _model_arguments(p)
    # The settings eval takes per method, from their descriptions (Setting.eval).
    add_setting_arguments(p, eval_settings())
    p.add_argument(
        "--unet-batch",
        type=int,
        help="predictions per model call, every method (latent 8, pixel 4); lower it on small GPUs",
    )
    add_engine_arguments(p)  # --engine ray: the (input, method) units on a Ray cluster
    p.set_defaults(run=run)


def eval_settings() -> list[str]:
    """The settings ``blendedit eval`` takes as flags (those described with ``eval=True``)."""
    return [name for name, (s, _, _) in setting_fields().items() if s.eval]


def settings_from_args(args: argparse.Namespace) -> tuple[Any, EvalModels]:
    from blendedit.eval.runner import EvalSettings

    def none(v: str | None) -> str | None:
        return None if v is None or v.lower() == "none" else v

    # The model family's own defaults (SDXL/LDM guidance 5, SD3/FLUX flow-euler, ...) under the
    # flags; a model that cannot be found yet fails later, only if a latent method runs.
    try:
        base = EditConfig(**family_defaults(args.model or DEFAULT_MODEL))
    except BlendEditError:
        base = EditConfig()
    given = given_settings(args)

    def of(cls: type) -> dict[str, Any]:
        return {k: v for k, v in given.items() if k in settings_of(cls)}

    latent = preset_on("default", base).replace(**of(EditConfig))
    pixel = PIXEL_PRESETS["default"].replace(**of(PixelConfig))
    if args.unet_batch is not None:
        latent = latent.replace(batch_size=args.unet_batch)
        pixel = pixel.replace(batch_size=args.unet_batch)
    settings = EvalSettings(
        methods=tuple(args.methods),
        n_images=args.n_images,
        seed=args.seed,
        batch=args.batch,
        limit=args.limit,
        latent=latent,
        pixel=pixel,
        time_single=args.time_single,
        max_side=args.max_side,
        progress=not args.quiet,
    )
    models = EvalModels(
        sd_model=args.model or DEFAULT_MODEL,
        sd_model_config=args.model_config,
        pixel_model=args.pixel_model,
        pixel_model_config=args.pixel_model_config,
        clip_model=none(args.clip_model),
        score_clip_model=none(args.score_clip_model),
        classifier=args.classifier,
        lpips_weights=tuple(args.lpips_weights) if args.lpips_weights else None,
        lpips_net=args.lpips_net,
        local_lpips_weights=tuple(args.local_lpips_weights) if args.local_lpips_weights else None,
        device=args.device,
        dtype=args.dtype,
        inpaint_model=args.inpaint_model,
    )
    return settings.check(), models


def run(args: argparse.Namespace) -> int:
    import os

    from blendedit.eval.runner import run_eval

    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if args.benchmark is not None:
        return run_benchmark_command(args)
    if args.images is None:
        raise InputError("images: --images (the paper's protocol) or --benchmark is required")
    if args.n_images < 1:
        raise InputError(f"n_images: must be at least 1, got {args.n_images}")
    quiet_libraries()
    settings, models = settings_from_args(args)
    report = run_eval(
        args.images, args.out, settings, models, engine=args.engine, ray=ray_options(args)
    )
    if not args.quiet:
        for name, m in report["methods"].items():
            if m["status"] != "ok":
                print(f"blendedit: {name}: skipped: {m['note']}", file=sys.stderr)
                continue
            r, t = m["results"], m["time"]
            pb, p1 = r["precision_batch"], r["precision_top1"]
            print(
                f"blendedit: {name}: precision {100 * pb:.1f}% batch, {100 * p1:.1f}% top-1; "
                f"{t['batch_mean_s']:.2f} s per batch of {m['batch']}",
                file=sys.stderr,
            )
    print(os.path.join(args.out, "report.md"))
    return 0


def _bench_judges(args: argparse.Namespace, device: Any, notes: list[str]) -> Any:
    """The judges of BrushBench's metrics (a model that cannot load: its column stays empty and
    the report's notes say why) and the CLIP of CLIP similarity."""
    from blendedit.eval.benchmarks import BenchJudges
    from blendedit.frame.judges import Judges, parse_judge_models
    from blendedit.frame.metrics import LPIPS
    from blendedit.frame.ranking import ClipScorer

    judges = Judges(parse_judge_models(args.judge_models))
    found = {}
    for name in ("imagereward", "hps", "aesthetic"):
        try:
            found[name] = judges.get(name, device)
        except BlendEditError as e:
            notes.append(f"{name}: not measured: {e}")
    clip = None
    if args.score_clip_model and args.score_clip_model.lower() != "none":
        clip = ClipScorer.from_pretrained(args.score_clip_model).to(device)
    lpips = None
    if args.lpips_weights:
        lpips = LPIPS.from_pretrained(*args.lpips_weights, net=args.lpips_net).eval().to(device)
        notes.append(f"LPIPS on {args.lpips_net} (BrushBench's is on SqueezeNet)")
    else:
        notes.append("LPIPS: not measured (--lpips-weights)")
    return BenchJudges(found, clip, lpips)


def run_benchmark_command(args: argparse.Namespace) -> int:
    """``--benchmark NAME --data DIR``: the latent method on every case (its best result by
    the ranking), BrushBench's metrics, the table with the published rows beside."""
    import os
    from pathlib import Path

    from blendedit.eval.benchmarks import read_benchmark, run_benchmark
    from blendedit.io import check_out_dir
    from blendedit.options import ModelOptions

    if args.data is None:
        raise InputError("data: --benchmark needs --data (the benchmark's folder)")
    cases = read_benchmark(args.benchmark, args.data, args.mask_key, args.limit)
    out = check_out_dir(args.out)
    settings, _ = settings_from_args(args)
    cfg = settings.latent
    if isinstance(args.batch, int):
        cfg = cfg.replace(num_images=args.batch)
    clip = None if args.clip_model is None or args.clip_model.lower() == "none" else args.clip_model
    opts = ModelOptions(model=args.model, model_config=args.model_config, clip_model=clip,
                        judge_models=tuple(args.judge_models or ()), device=args.device,
                        dtype=args.dtype)  # fmt: skip
    editor = opts.load()
    notes: list[str] = []
    judges = _bench_judges(args, editor.device, notes)

    def edit(case: Any) -> Any:
        return editor(case.image, case.mask, case.prompt, config=cfg).best.image

    run_benchmark(args.benchmark, cases, edit, judges, Path(out), "blendedit latent", notes)
    print(os.path.join(args.out, "report.md"))
    return 0
