"""The evaluation report: ``report.json`` (every number, the settings and the versions),
``report.md`` (the paper's Table 1 and Table 2 layout plus background fidelity and CLIP score),
``precision_vs_time.png`` and ``grid.png`` (each input with its mask and each method's top result).

Timings are the only numbers that legitimately differ between two runs on the same inputs; they
all sit under keys named ``time`` (per method, per input) or ``run`` (the whole run), so
:func:`without_timings` gives the part of a report that must match exactly.
"""

from __future__ import annotations

import math
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from blendedit.eval.methods import METHODS, EvalModels, Runner
from blendedit.eval.metrics import precision_rule
from blendedit.eval.protocol import EvalCase
from blendedit.io import save_json, write_atomic, write_text

REPORT_VERSION = 1
TIMING_KEYS = ("time", "run")

# SPEC 4: the paper's Table 1 and 2, as copied there from a secondary source (check the arXiv PDF
# before citing). Time on one NVIDIA A10. Rows map onto blendedit's methods.
PAPER_REFERENCE = [
    {
        "row": "Blended Latent Diffusion",
        "method": "latent-decoded",
        "precision_batch": 0.2866,
        "precision_top1": 0.54,
        "single_s": 6,
        "batch_s": 53,
        "batch": 24,
    },
    {
        "row": "Blended Latent Diffusion + background optimisation",
        "method": "latent-decoder",
        "precision_batch": None,
        "precision_top1": None,
        "single_s": None,
        "batch_s": 72,
        "batch": 24,
    },
    {
        "row": "Blended Diffusion",
        "method": "pixel",
        "precision_batch": 0.104,
        "precision_top1": 0.36,
        "single_s": 27,
        "batch_s": 1472,
        "batch": 64,
    },
    {
        "row": "GLIDE-filtered",
        "method": None,
        "precision_batch": 0.0187,
        "precision_top1": 0.04,
        "single_s": None,
        "batch_s": None,
        "batch": 24,
    },
]


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def _r(x: float | None, nd: int = 6) -> float | None:
    if x is None:
        return None
    return x if not math.isfinite(x) else round(float(x), nd)


def _mean(values: Iterable[float | None]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return _r(sum(v) / len(v)) if v else None


def _se(values: Sequence[float]) -> float | None:
    """Standard error of the mean over inputs (sample standard deviation / sqrt(n))."""
    return _r(statistics.stdev(values) / math.sqrt(len(values))) if len(values) > 1 else None


def _finite_mean(values: Iterable[float]) -> tuple[float | None, int]:
    """Mean over the finite values, and how many were infinite (PSNR of an untouched
    background)."""
    v = list(values)
    fin = [x for x in v if math.isfinite(x)]
    return (_r(sum(fin) / len(fin)) if fin else None), len(v) - len(fin)


def _fidelity(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    psnr, n_inf = _finite_mean(r["psnr"] for r in rows)
    out["psnr"], out["psnr_inf"] = psnr, n_inf
    for key in ("mse", "ssim", "lpips"):
        vals = [r.get(key) for r in rows]
        out[key] = _mean(vals) if all(v is not None for v in vals) and vals else None
    return out


def _at(m: Mapping[str, Any], key: str, i: int) -> Any:
    v = m.get(key)
    return v[i] if isinstance(v, list) else None


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-input values and their averages over the inputs of one method."""
    per_case = []
    top_rows: list[dict[str, Any]] = []
    all_rows: list[dict[str, Any]] = []
    keys = ("psnr", "mse", "ssim", "lpips", "clip_masked", "clip_full")
    for rec in records:
        case: EvalCase = rec["case"]
        m, t = rec["metrics"], rec["meta"]["time"]
        n = len(m["correct"])
        rows = [{k: _at(m, k, i) for k in keys} for i in range(n)]
        # The first prediction generated (lowest seed): what an unranked run would give.
        seeds = [p["seed"] for p in rec["meta"]["predictions"]]
        first = seeds.index(min(seeds)) if len(seeds) == n else 0
        top_rows.append(rows[0])
        all_rows.extend(rows)
        per_case.append(
            {
                "id": case.id,
                "n": n,
                "n_correct": m["n_correct"],
                "precision": _r(m["precision"]),
                "top1_correct": m["top1_correct"],
                "first_correct": bool(m["correct"][first]),
                "diversity": _r(m["diversity"]),
                "top1": {k: _r(v) for k, v in rows[0].items()},
                "time": {"batch_s": t["batch_s"], "single_s": t.get("single_s")},
            }
        )
    prec = [c["precision"] for c in per_case]
    top1 = [1.0 if c["top1_correct"] else 0.0 for c in per_case]
    first = [1.0 if c["first_correct"] else 0.0 for c in per_case]
    div = [c["diversity"] for c in per_case if c["diversity"] is not None]
    clip = None
    if all_rows and all_rows[0]["clip_masked"] is not None:
        clip = {
            "masked_top1": _mean(r["clip_masked"] for r in top_rows),
            "masked_batch": _mean(r["clip_masked"] for r in all_rows),
            "full_top1": _mean(r["clip_full"] for r in top_rows),
            "full_batch": _mean(r["clip_full"] for r in all_rows),
        }
    batch_t = [c["time"]["batch_s"] for c in per_case]
    single_t = [c["time"]["single_s"] for c in per_case if c["time"]["single_s"] is not None]
    results = {
        "inputs": len(per_case),
        "predictions": len(all_rows),
        "precision_batch": _mean(prec),
        "precision_batch_se": _se(prec),
        "precision_top1": _mean(top1),
        "precision_top1_se": _se(top1),
        "precision_first": _mean(first),  # unranked: the first prediction generated
        "precision_first_se": _se(first),
        "diversity": _mean(div),
        "diversity_inputs": len(div),
        "background_top1": _fidelity(top_rows),
        "background_batch": _fidelity(all_rows),
        "clip_score": clip,
    }
    time = {
        "single_mean_s": _mean(single_t),
        "single_median_s": _r(statistics.median(single_t)) if single_t else None,
        "batch_mean_s": _mean(batch_t),
        "batch_median_s": _r(statistics.median(batch_t)) if batch_t else None,
    }
    return {"results": results, "time": time, "per_input": per_case}


def versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    from blendedit._version import __version__

    return {
        "blendedit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def build_report(
    *,
    images: Path,
    cases: Sequence[EvalCase],
    done: Sequence[EvalCase],
    settings: Any,
    models: EvalModels,
    runners: Mapping[str, Runner],
    skipped: Mapping[str, str],
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    metric_settings: Mapping[str, Any],
    device: str,
) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for name in settings.methods:
        spec = METHODS[name]
        if name in skipped:
            methods[name] = {"title": spec.title, "status": "skipped", "note": skipped[name]}
            continue
        runner = runners[name]
        methods[name] = {
            "title": spec.title,
            "status": "ok",
            "batch": settings.batch_for(name),
            "settings": runner.settings(),
            **summarize(records[name]),
        }
    notes = []
    if not metric_settings.get("lpips_weights"):
        notes.append("diversity and background LPIPS: unavailable (no LPIPS weights given)")
    if not metric_settings.get("score_clip_model"):
        notes.append("CLIP score: not computed (no CLIP score model)")
    if not models.clip_model:
        notes.append("no ranking CLIP model: top-1 is the first prediction generated")
    return {
        "report_version": REPORT_VERSION,
        "protocol": {
            "images_dir": str(images),
            "photos": sorted({c.image.name for c in cases}),
            "n_images": len(cases),
            "evaluated": len(done),
            "limit": settings.limit,
            "seed": settings.seed,
            "max_side": settings.max_side,
            "mask": "rectangle, each side uniform in [dim/5, dim/2], uniform position",
            "prompt": "a random class of the classifier's label map (its first name)",
            "precision": precision_rule(metric_settings["classifier"]),
        },
        "cases": [c.to_dict() for c in done],
        "metrics": dict(metric_settings),
        "models": models.to_dict(),
        "methods": methods,
        "notes": notes,
        "paper_reference": PAPER_REFERENCE,
        "versions": versions(),
        "run": {"device": device, "device_name": _device_name(device)},
    }


def without_timings(report: Any) -> Any:
    """The report without its timing values (keys ``time`` and ``run``): what two runs on the
    same inputs must agree on exactly."""
    if isinstance(report, dict):
        return {k: without_timings(v) for k, v in report.items() if k not in TIMING_KEYS}
    if isinstance(report, list):
        return [without_timings(v) for v in report]
    return report


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _pct(x: float | None, se: float | None = None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.{digits}f}%" + (f" ± {100 * se:.1f}" if se is not None else "")


def _num(x: float | None, fmt: str = "{:.3f}") -> str:
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return "inf"
    return fmt.format(x)


def _secs(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _label(name: str, method: Mapping[str, Any]) -> str:
    return f"{method['title']} (`{name}`)"


def _intro(report: Mapping[str, Any], lpips: str) -> list[str]:
    p, met = report["protocol"], report["metrics"]
    partial = (
        f" (**partial: the first {p['evaluated']} of {p['n_images']}**)"
        if p["evaluated"] < p["n_images"]
        else ""
    )
    return [
        "# blendedit evaluation\n",
        f"{p['evaluated']} inputs{partial} from `{p['images_dir']}` ({len(p['photos'])} photos), "
        f"seed {p['seed']}: per input a random rectangle (each side uniform in [dim/5, dim/2]) "
        "and a random class name of the classifier as the prompt (Blended Latent Diffusion paper, "
        "section 5 and appendix C.1). Each method generates its batch for the same inputs and "
        "seeds; its predictions are ranked by CLIP "
        f"(`{report['models']['clip_model']}`).\n",
        f"Precision: each prediction {p['precision']} "
        f"(`{met['classifier']}`). *Batch*: the average over all "
        "predictions of an input, then over inputs; *top-1*: the top-ranked prediction alone; "
        "*first*: the first prediction generated (lowest seed), what the method gives unranked "
        "(± standard error over inputs). Diversity: mean pairwise "
        f"{lpips} between the masked correct predictions of an input (inputs with at least two), "
        "averaged over inputs.\n",
    ]


def _precision_table(ok: Mapping[str, Any]) -> list[str]:
    """Table 1: precision and diversity."""
    header = ["Method", "Batch", "Precision (batch) ↑", "Precision (top-1) ↑",
              "Precision (first, unranked)", "Diversity ↑"]  # fmt: skip
    rows = []
    for k, v in ok.items():
        r = v["results"]
        diversity = _num(r["diversity"])
        if r["diversity"] is not None:
            diversity += f" ({r['diversity_inputs']} inputs)"
        rows.append(
            [
                _label(k, v),
                str(v["batch"]),
                _pct(r["precision_batch"], r["precision_batch_se"]),
                _pct(r["precision_top1"], r["precision_top1_se"]),
                _pct(r.get("precision_first"), r.get("precision_first_se")),
                diversity,
            ]
        )
    return ["## Table 1: precision and diversity\n", _table(header, rows)]


def _time_table(report: Mapping[str, Any], ok: Mapping[str, Any]) -> list[str]:
    """Table 2: inference time."""
    rows = [
        [
            _label(k, v),
            str(v["batch"]),
            f"{_secs(v['time']['single_mean_s'])} ({_secs(v['time']['single_median_s'])})",
            f"{_secs(v['time']['batch_mean_s'])} ({_secs(v['time']['batch_median_s'])})",
        ]
        for k, v in ok.items()
    ]
    return [
        "## Table 2: inference time\n",
        f"Seconds per input on {report['run']['device_name']} (`{report['run']['device']}`), "
        "models loaded, mean over inputs (median in brackets). *Single image*: one prediction "
        "alone; *full batch*: the whole ranked batch, including ranking and background handling.\n",
        _table(["Method", "Batch", "Single image (s)", "Full batch (s)"], rows),
    ]


def _background_table(ok: Mapping[str, Any], lpips: str) -> list[str]:
    """Background fidelity of the top-ranked prediction."""
    rows = []
    for k, v in ok.items():
        b = v["results"]["background_top1"]
        rows.append(
            [
                _label(k, v),
                _num(b["psnr"], "{:.2f}") + (f" ({b['psnr_inf']} inf)" if b["psnr_inf"] else ""),
                _num(None if b["mse"] is None else 1000 * b["mse"], "{:.3f}"),
                _num(b["ssim"], "{:.4f}"),
                _num(b["lpips"], "{:.4f}"),
            ]
        )
    return [
        "## Background fidelity outside the mask (top-ranked prediction)\n",
        "PSNR (dB; mean over predictions whose background changed at all, the number left "
        "untouched in brackets), MSE (×10⁻³, mean over the 3 channels; BrushNet's script reports "
        "3× this), SSIM (windows wholly outside the mask) and "
        f"{lpips} (the mask region blacked out), against the input photo.\n",
        _table(["Method", "PSNR ↑", "MSE ×10⁻³ ↓", "SSIM ↑", "LPIPS ↓"], rows),
    ]


def _clip_table(met: Mapping[str, Any], ok: Mapping[str, Any]) -> list[str]:
    """The CLIP score, when a CLIP score model was given."""
    if not met.get("score_clip_model"):
        return []
    rows = []
    for k, v in ok.items():
        c = v["results"]["clip_score"] or {}
        if c:
            rows.append(
                [
                    _label(k, v),
                    _num(c["masked_top1"], "{:.2f}"),
                    _num(c["masked_batch"], "{:.2f}"),
                    _num(c["full_top1"], "{:.2f}"),
                ]
            )
    return [
        "## CLIP score\n",
        f"`max(100 cos, 0)` between `{met['score_clip_model']}` embeddings of the prediction "
        "and of the prompt: of the masked prediction (the region the prompt is about) and of "
        "the whole image (BrushBench's way). Note that the ranking already picked the top-1 "
        "by a CLIP model.\n",
        _table(["Method", "Masked, top-1 ↑", "Masked, batch ↑", "Whole image, top-1 ↑"], rows),
    ]


def _not_measured(report: Mapping[str, Any]) -> list[str]:
    """The methods skipped and the notes, if any."""
    skipped = {k: v for k, v in report["methods"].items() if v["status"] != "ok"}
    if not (skipped or report["notes"]):
        return []
    return [
        "## Not measured\n",
        *(f"- `{k}`: skipped: {v['note']}" for k, v in skipped.items()),
        *(f"- {n}" for n in report["notes"]),
        "",
    ]


def _paper_table(report: Mapping[str, Any]) -> list[str]:
    """The paper's Tables 1 and 2, for orientation."""
    header = ["Paper row (blendedit method)", "Batch", "Precision (batch)", "Precision (top-1)",
              "Single image (s)", "Full batch (s)"]  # fmt: skip
    rows = [
        [
            r["row"] + (f" (`{r['method']}`)" if r["method"] else ""),
            str(r["batch"]),
            _pct(r["precision_batch"], digits=2),
            _pct(r["precision_top1"], digits=0),
            "n/a" if r["single_s"] is None else f"{r['single_s']:g}",
            "n/a" if r["batch_s"] is None else f"{r['batch_s']:g}",
        ]
        for r in report["paper_reference"]
    ]
    return [
        "## The paper's numbers, for orientation\n",
        "Blended Latent Diffusion paper, Tables 1 and 2 (as copied in SPEC 4 from a secondary "
        "source; check the arXiv PDF before citing). 50 inputs; time on one NVIDIA A10. "
        "Different models, images and classifier variant than any run here.\n",
        _table(header, rows),
    ]


def _versions_table(report: Mapping[str, Any]) -> list[str]:
    return [
        "## Settings and versions\n",
        "Every setting of every method, every per-input number and the inputs themselves are in "
        "`report.json`; the predictions are in `predictions/<method>/<input>/`.\n",
        _table(["Package", "Version"], [[k, f"`{v}`"] for k, v in report["versions"].items()]),
    ]


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the report's sections, in the paper's order, then the paper's numbers."""
    met = report["metrics"]
    ok = {k: v for k, v in report["methods"].items() if v["status"] == "ok"}
    lpips = f"LPIPS-{met['lpips_net']}" if met.get("lpips_weights") else "LPIPS (no weights: n/a)"
    out = [
        *_intro(report, lpips),
        *_precision_table(ok),
        *_time_table(report, ok),
        *_background_table(ok, lpips),
        *_clip_table(met, ok),
        *_not_measured(report),
        *_paper_table(report),
        *_versions_table(report),
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def precision_time_figure(report: Mapping[str, Any], path: Path) -> bool:
    """Precision (batch and top-1) against full-batch time, one point pair per method.
    Returns False (and writes nothing) when no method has both numbers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = []
    for name, v in report["methods"].items():
        if v["status"] != "ok":
            continue
        t, r = v["time"]["batch_mean_s"], v["results"]
        if t and r["precision_batch"] is not None:
            pts.append((name, t, 100 * r["precision_batch"], 100 * r["precision_top1"]))
    if not pts:
        return False
    fig = Figure(figsize=(8.5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(len(pts))]
    for (name, t, pb, p1), c in zip(pts, colors, strict=True):
        ax.plot([t, t], [pb, p1], color=c, lw=1.5, alpha=0.6, label=name)
        ax.scatter([t], [pb], color=c, marker="o", zorder=3)
        ax.scatter([t], [p1], color=c, marker="^", zorder=3)
    ts = [p[1] for p in pts]
    if max(ts) / max(min(ts), 1e-9) > 20:
        ax.set_xscale("log")
    ax.scatter([], [], color="grey", marker="o", label="batch precision")
    ax.scatter([], [], color="grey", marker="^", label="top-1 precision")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.set_xlabel(f"full-batch time per input (s), {report['run']['device']}")
    ax.set_ylabel("precision (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Precision vs. time ({Path(str(report['metrics']['classifier'])).name})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png"), replace=True)
    return True


GRID_CELL = 192  # px, width of one column


def grid_figure(
    cases: Sequence[EvalCase],
    columns: Mapping[str, Mapping[str, tuple[Path, bool]]],
) -> Image.Image:
    """Rows: inputs. First column: the photo with its rectangle and prompt; then, per method, its
    top-ranked prediction framed green (classified correctly) or red (not).
    ``columns``: method -> case id -> (PNG path, correct)."""
    w = GRID_CELL
    heights = [round(w * c.size[1] / c.size[0]) for c in cases]
    head, pad = 18, 4
    total_h = head + sum(h + pad for h in heights)
    names = ["input", *columns]
    grid = Image.new("RGB", (len(names) * (w + pad), total_h), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(names):
        draw.text((j * (w + pad) + 4, 3), name, fill="black")
    y = head
    for case, h in zip(cases, heights, strict=True):
        photo = case.load_image().resize((w, h), Image.Resampling.LANCZOS)
        sx, sy = w / case.size[0], h / case.size[1]
        left, top, bw, bh = case.box
        d = ImageDraw.Draw(photo)
        d.rectangle(
            [left * sx, top * sy, (left + bw) * sx - 1, (top + bh) * sy - 1], outline="red", width=2
        )
        d.rectangle([0, 0, w, 12], fill="black")
        d.text((2, 0), case.prompt[:30], fill="white")
        grid.paste(photo, (0, y))
        for j, name in enumerate(columns, start=1):
            item = columns[name].get(case.id)
            if item is None:
                continue
            path, correct = item
            with Image.open(path) as im:
                cell = im.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
            ImageDraw.Draw(cell).rectangle(
                [0, 0, w - 1, h - 1], outline="green" if correct else "red", width=3
            )
            grid.paste(cell, (j * (w + pad), y))
        y += h + pad
    return grid


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_report(
    out: Path,
    *,
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    done: Sequence[EvalCase],
    **kwargs: Any,
) -> dict[str, Any]:
    report = build_report(records=records, done=done, **kwargs)
    save_json(report, out / "report.json", replace=True)
    write_text(render_markdown(report), out / "report.md", replace=True)
    precision_time_figure(report, out / "precision_vs_time.png")
    columns = {
        name: {
            r["case"].id: (
                out / "predictions" / name / r["case"].id / r["meta"]["predictions"][0]["file"],
                bool(r["metrics"]["top1_correct"]),
            )
            for r in recs
        }
        for name, recs in records.items()
    }
    grid = grid_figure(done, columns)
    write_atomic(out / "grid.png", lambda f: grid.save(f, format="PNG"), replace=True)
    return report
