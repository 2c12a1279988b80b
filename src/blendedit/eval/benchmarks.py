"""The field's local-editing benchmarks, read in their published layouts, with BrushBench's metrics.

Readers (the user downloads the data; :func:`read_benchmark`):

* ``brushbench`` / ``editbench`` (BrushNet, Ju et al. ECCV 2024, section 4.1, as BrushNet releases
  them): ``mapping_file.json``, ``{key: {"image": path, "inpainting_mask": RLE,
  "outpainting_mask": RLE, "caption": text}}``; the RLE is BrushNet's: flat ``[start, length,
  ...]`` over the 512x512 image in row order, starts counted from 1.
* ``pie-bench`` (PnPInversion, Ju et al. ICLR 2024, section 4): ``mapping_file.json``,
  ``{key: {"image_path": path under annotation_images/, "mask": RLE, "editing_prompt": text with
  [brackets] round the edited words, ...}}``; the RLE starts count from 0 and the reference
  decoder marks the image's border as masked (its guard against annotation errors), as here.
* ``magicbrush`` (Zhang et al. NeurIPS 2023): its parquet files (``*.parquet`` under the folder)
  with ``source_img`` and ``mask_img`` (image structs: ``bytes``) and ``instruction``; the mask's
  white (or, with an alpha channel, transparent) pixels are the region; the instruction is the
  prompt.

Metrics (BrushNet's ``evaluate_brushnet.py``, section 4.2): on the result and the source at 512x512,
ImageReward, HPS v2.1, the aesthetic score and CLIP similarity (``100 * max(cos, 0)``, CLIP
ViT-L/14) of the whole result; PSNR, MSE and LPIPS outside the mask, each on both images
multiplied by the outside mask, BrushNet's MSE being the squared difference summed over the three
channels and divided by the outside pixels (three times the per-channel mean; PSNR from it); plus
SSIM outside the mask and CLIP similarity inside it (the masked result), which BrushBench does not
report.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from blendedit.errors import InputError

BENCHMARKS = ("brushbench", "editbench", "pie-bench", "magicbrush")
SIDE = 512  # BrushBench, EditBench and PIE-Bench masks are 512x512; metrics run at this size


@dataclass
class BenchCase:
    """One input: ``image`` RGB, ``mask`` bool (H, W) True where the edit goes, ``prompt``."""

    id: str
    image: Image.Image
    mask: np.ndarray
    prompt: str


def brushnet_rle(rle: list[int], shape: tuple[int, int] = (SIDE, SIDE)) -> np.ndarray:
    """BrushNet's ``rle2mask``: ``[start, length, ...]``, starts from 1, row order -> bool (H, W)."""
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    runs = np.asarray(rle, dtype=np.int64).reshape(-1, 2)
    for start, length in runs:
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape(shape)


def pie_rle(rle: list[int], shape: tuple[int, int] = (SIDE, SIDE)) -> np.ndarray:
    """PIE-Bench's ``mask_decode``: starts from 0, row order, then the border marked masked."""
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    runs = np.asarray(rle, dtype=np.int64).reshape(-1, 2)
    for start, length in runs:
        flat[start : start + min(length, flat.size - start)] = True
    mask = flat.reshape(shape)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def _mapping(data: Path, name: str) -> dict[str, Any]:
    path = data / "mapping_file.json"
    if not path.is_file():
        raise InputError(f"data: {str(data)!r} has no mapping_file.json ({name}'s layout)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"data: {str(path)!r} is not valid JSON: {e}") from None


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise InputError(f"data: the benchmark names {str(path)!r}, which is not a file")
    return Image.open(path).convert("RGB")


def _brushnet(data: Path, name: str, mask_key: str) -> list[BenchCase]:
    out = []
    for key, item in _mapping(data, name).items():
        if mask_key not in item:
            raise InputError(f"mask_key: {mask_key!r} is not a key of {name}'s entry {key!r}")
        image = _open(data / item["image"])
        out.append(BenchCase(str(key), image, brushnet_rle(item[mask_key]), item["caption"]))
    return out


def _pie(data: Path) -> list[BenchCase]:
    out = []
    for key, item in _mapping(data, "pie-bench").items():
        image = _open(data / "annotation_images" / item["image_path"])
        prompt = str(item["editing_prompt"]).replace("[", "").replace("]", "")
        out.append(BenchCase(str(key), image, pie_rle(item["mask"]), prompt))
    return out


def _region(mask_img: Image.Image) -> np.ndarray:
    """MagicBrush's mask image -> bool (H, W): transparent pixels where it has alpha, else white."""
    if mask_img.mode in ("RGBA", "LA") and np.asarray(mask_img.getchannel("A")).min() < 255:
        return np.asarray(mask_img.getchannel("A")) < 128
    return np.asarray(mask_img.convert("L")) >= 128


def _magicbrush(data: Path) -> list[BenchCase]:
    import pyarrow.parquet as pq

    files = sorted(data.rglob("*.parquet"))
    if not files:
        raise InputError(f"data: {str(data)!r} holds no *.parquet files (MagicBrush's layout)")
    out = []
    for f in files:
        table = pq.read_table(f, columns=["img_id", "turn_index", "source_img", "mask_img",
                                          "instruction"]).to_pylist()  # fmt: skip
        for row in table:
            image = Image.open(io.BytesIO(row["source_img"]["bytes"])).convert("RGB")
            mask = _region(Image.open(io.BytesIO(row["mask_img"]["bytes"])))
            if mask.shape != (image.height, image.width):
                mask = np.asarray(
                    Image.fromarray(mask).resize(image.size, Image.Resampling.NEAREST)
                )
            out.append(BenchCase(f"{row['img_id']}-{row['turn_index']}", image, mask,
                                 str(row["instruction"])))  # fmt: skip
    return out


def read_benchmark(
    name: str, data: str | Path, mask_key: str = "inpainting_mask", limit: int | None = None
) -> list[BenchCase]:
    """The cases of benchmark ``name`` in folder ``data`` (its published layout), first ``limit``."""
    root = Path(data)
    if name not in BENCHMARKS:
        raise InputError(f"benchmark: {name!r} must be one of {', '.join(BENCHMARKS)}")
    if not root.is_dir():
        raise InputError(f"data: {str(root)!r} is not a folder")
    readers: dict[str, Callable[[], list[BenchCase]]] = {
        "brushbench": lambda: _brushnet(root, name, mask_key),
        "editbench": lambda: _brushnet(root, name, mask_key),
        "pie-bench": lambda: _pie(root),
        "magicbrush": lambda: _magicbrush(root),
    }
    cases = readers[name]()
    if not cases:
        raise InputError(f"data: {str(root)!r} holds no {name} cases")
    return cases[:limit] if limit else cases


# ------------------------------------------------------------------ BrushBench's metrics


def _f32(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32) / 255.0


def outside_ssim(src: np.ndarray, out: np.ndarray, keep: np.ndarray) -> float:
    """SSIM outside the mask (Wang et al. 2004, Eq. 13; 11x11 Gaussian window, sigma 1.5, data
    range 1) from torchmetrics' functional SSIM map, averaged over the windows wholly outside the
    mask: images (H, W, 3) and ``keep`` (H, W) in [0, 1], 1 outside the mask. The same number as
    :func:`blendedit.frame.metrics.masked_ssim` with ``erode=True`` (tests/test_eval_benchmarks)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = (torch.from_numpy(v).permute(2, 0, 1)[None] for v in (out, src))  # (1, 3, H, W)
    _, full = structural_similarity_index_measure(
        a, b, data_range=1.0, reduction="none", return_full_image=True
    )  # (1, 3, H, W), reflect-padded at the border
    r = 5  # the window's radius: the map's positions whose window lies wholly inside the image
    smap = full[..., r:-r, r:-r].mean(dim=1, keepdim=True)  # (1, 1, H-10, W-10)
    w = torch.from_numpy(keep)[None, None].to(smap.dtype)  # (1, 1, H, W)
    wpos = -torch.nn.functional.max_pool2d(-w, 2 * r + 1, stride=1)  # (1, 1, H-10, W-10)
    if float(wpos.sum()) <= 0:
        raise InputError("mask: no SSIM window position outside it")
    return float((smap * wpos).sum() / wpos.sum())


def outside_scores(src: Image.Image, out: Image.Image, mask: np.ndarray) -> dict[str, float]:
    """BrushNet's PSNR and MSE outside the mask (its own formula, see the module docstring: the
    published table's, not torchmetrics' per-channel mean) and torchmetrics' SSIM there
    (:func:`outside_ssim`)."""
    keep = (
        1.0
        - np.asarray(
            Image.fromarray(mask).resize((SIDE, SIDE), Image.Resampling.NEAREST), dtype=np.float32
        )[..., None]
    )  # (512, 512, 1): 1 outside the mask
    a, b = _f32(src) * keep, _f32(out) * keep
    mse = float(((a - b) ** 2).sum() / max(keep.sum(), 1.0))
    psnr = 1000.0 if mse < 1e-10 else 20 * math.log10(1.0 / math.sqrt(mse))
    ssim = outside_ssim(_f32(src), _f32(out), keep[..., 0])  # outside pixels only
    return {"psnr": psnr, "mse": mse, "ssim": ssim}


@dataclass
class BenchJudges:
    """What scores the results: judges by name (``imagereward``, ``hps``, ``aesthetic``; those
    missing are reported as not measured), a :class:`~blendedit.frame.ranking.ClipScorer` for
    CLIP similarity, an LPIPS network (or None)."""

    judges: Mapping[str, Any]
    clip: Any = None
    lpips: Any = None


def case_scores(
    case: BenchCase, result: Image.Image, judges: BenchJudges
) -> dict[str, float | None]:
    """Every BrushBench metric of one result (None: its model was not given)."""
    src = case.image.resize((SIDE, SIDE))
    out = result.convert("RGB").resize((SIDE, SIDE))
    x = torch.from_numpy(_f32(out)).permute(2, 0, 1)[None]  # (1, 3, 512, 512)
    mask = torch.from_numpy(
        np.array(Image.fromarray(case.mask).resize((SIDE, SIDE), Image.Resampling.NEAREST))
    ).float()[None, None]  # (1, 1, 512, 512)
    scores: dict[str, float | None] = dict(outside_scores(src, out, case.mask))
    for name in ("imagereward", "hps", "aesthetic"):
        judge = judges.judges.get(name)
        scores[name] = None if judge is None else float(judge.score(x, mask, case.prompt)[0])
    scores["clip"] = scores["clip_inside"] = None
    if judges.clip is not None:
        from blendedit.eval.metrics import clip_scores

        scores["clip"] = float(clip_scores(judges.clip, x, case.prompt)[0])
        scores["clip_inside"] = float(clip_scores(judges.clip, x, case.prompt, mask[0, 0])[0])
    scores["lpips"] = None
    if judges.lpips is not None:
        keep = 1 - mask
        with torch.no_grad():
            a = torch.from_numpy(_f32(src)).permute(2, 0, 1)[None] * keep
            scores["lpips"] = float(judges.lpips(a * 2 - 1, x * keep * 2 - 1).flatten()[0])
    return scores


# ------------------------------------------------------------------ the table

# The BrushBench table's columns: (key, heading, scale); the published rows use the same scales.
COLUMNS = (
    ("imagereward", "ImageReward x10", 10.0),
    ("hps", "HPS v2.1 x100", 100.0),
    ("aesthetic", "Aesthetic", 1.0),
    ("psnr", "PSNR", 1.0),
    ("lpips", "LPIPS x10^3", 1000.0),
    ("mse", "MSE x10^3", 1000.0),
    ("clip", "CLIP sim", 1.0),
)
EXTRA = (("ssim", "SSIM outside", 1.0), ("clip_inside", "CLIP sim inside", 1.0))
NTN = "NTN-Diff, NeurIPS 2025 (arXiv 2510.08273), table 1"
FYP = "Follow-Your-Preference, ICLR 2026 (ImageReward only)"
PUBLISHED: dict[str, list[tuple[str, dict[str, float], str]]] = {
    "brushbench": [  # HPS v2 in NTN-Diff's table; * = with pixel blending
        (
            "Blended Latent Diffusion",
            {"imagereward": 9.78, "hps": 25.87, "psnr": 21.33, "lpips": 49.26, "clip": 26.15},
            NTN,
        ),
        (
            "BrushNet*",
            {"imagereward": 12.64, "hps": 27.78, "psnr": 31.94, "lpips": 18.67, "clip": 26.39},
            NTN,
        ),
        (
            "NTN-Diff*",
            {"imagereward": 12.69, "hps": 27.82, "psnr": 40.70, "lpips": 0.88, "clip": 26.49},
            NTN,
        ),
        ("BrushNet", {"imagereward": 12.72}, FYP),
        ("FLUX.1 Fill", {"imagereward": 12.76}, FYP),
        ("MTADiffusion", {"imagereward": 12.69}, "MTADiffusion, CVPR 2025 (ImageReward only)"),
    ],
    "editbench": [
        ("BrushNet", {"imagereward": -1.30}, FYP),
        ("FLUX.1 Fill", {"imagereward": 4.91}, FYP),
        ("MTADiffusion", {"imagereward": 4.82}, "MTADiffusion, CVPR 2025 (ImageReward only)"),
    ],
    "pie-bench": [],
    "magicbrush": [],
}


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def mean_scores(per_case: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Each metric's mean over the cases that have it (None: no case has it)."""
    keys = [k for k, _, _ in (*COLUMNS, *EXTRA)]
    out: dict[str, float | None] = {}
    for k in keys:
        vals = [float(c[k]) for c in per_case if c.get(k) is not None]
        out[k] = sum(vals) / len(vals) if vals else None
    return out


def table(benchmark: str, measured: Mapping[str, Mapping[str, float | None]], n: int,
          notes: list[str]) -> str:  # fmt: skip
    """BrushBench's table layout: the published rows (with their sources), then blendedit's own
    measured rows, in separate tables so a reader never mistakes one for the other."""
    head = "| method | " + " | ".join(h for _, h, _ in COLUMNS)
    rule = "|---|" + "---:|" * len(COLUMNS)
    lines = [f"# {benchmark}: blendedit eval --benchmark", "",
             "## Published (not measured here)", ""]  # fmt: skip
    rows = PUBLISHED.get(benchmark, [])
    if rows:
        lines += [head + " | source |", rule + "---|"]
        for method, vals, source in rows:
            cells = " | ".join(_cell(vals.get(k)) for k, _, _ in COLUMNS)
            lines.append(f"| {method} | {cells} | {source} |")
    else:
        lines.append(f"No published numbers for {benchmark} in the project's notes.")
    lines += ["", f"## Measured by blendedit ({n} cases)", "",
              head + " | " + " | ".join(h for _, h, _ in EXTRA) + " |",
              rule + "---:|" * len(EXTRA)]  # fmt: skip
    for method, vals in measured.items():
        cells = [
            _cell(None if vals.get(k) is None else float(vals[k]) * s)  # type: ignore[arg-type]
            for k, _, s in (*COLUMNS, *EXTRA)
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "A dash: not measured (its model was not given or could not load)."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def run_benchmark(
    benchmark: str,
    cases: list[BenchCase],
    edit: Callable[[BenchCase], Image.Image],
    judges: BenchJudges,
    out: Path,
    method: str,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Edit every case (``edit`` returns the result to score), score it, and write ``out``:
    ``results/<id>.png``, ``report.json`` (per case and the means) and ``report.md`` (the table)."""
    from blendedit.frame.stop import checkpoint
    from blendedit.io import save_json, save_png, slug, write_text

    (out / "results").mkdir(parents=True, exist_ok=True)
    per_case = []
    for case in cases:
        checkpoint("benchmark case")
        result = edit(case)
        save_png(result, out / "results" / f"{slug(case.id, 80)}.png")
        per_case.append({"id": case.id, "prompt": case.prompt, **case_scores(case, result, judges)})
    means = mean_scores(per_case)
    report = {"benchmark": benchmark, "method": method, "cases": per_case, "mean": means,
              "published": [{"method": m, "values": v, "source": s}
                            for m, v, s in PUBLISHED.get(benchmark, [])]}  # fmt: skip
    save_json(report, out / "report.json")
    write_text(table(benchmark, {method: means}, len(cases), notes or []), out / "report.md")
    return report
