"""Figures for people: the background-reconstruction comparison of BLD paper figure 4."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

CELL = 256  # px, width of one column of the figure
ZOOM_CROP = 64  # px of the input around the mask border shown in the zoom row
PAPER_ORDER = ("decoded", "stitch", "poisson", "latent", "decoder")  # BLD paper figure 4


@dataclass
class ModeRow:
    """One background mode applied to the same edit."""

    mode: str
    image: Image.Image
    metrics: dict[str, float]
    seconds: float  # background reconstruction alone


def compare_backgrounds(
    editor: Any,
    image: Image.Image,
    mask: np.ndarray,
    prompt: str,
    modes: tuple[str, ...] = PAPER_ORDER,
    **settings: Any,
) -> list[ModeRow]:
    """Run one edit (one seed) and reconstruct its background with each mode. Denoising is
    deterministic, so every mode starts from the same decoded result x_hat."""
    settings = {"num_images": 1, "rank": False, **settings}
    rows = []
    for mode in modes:
        r = editor(image, mask, prompt, background=mode, **settings)
        rows.append(ModeRow(mode, r.best.image, r.best.metrics, r.timings.background))
    return rows


def _border_box(mask: np.ndarray, side: int) -> tuple[int, int, int, int]:
    """A square of ``side`` px centred on the mask's border at the middle of its left edge."""
    ys, xs = np.nonzero(mask)
    y = int((ys.min() + ys.max()) // 2)
    row = np.nonzero(mask[y])[0]
    x = int(row.min()) if row.size else int(xs.min())
    h, w = mask.shape
    side = min(side, h, w)
    left = min(max(x - side // 2, 0), w - side)
    top = min(max(y - side // 2, 0), h - side)
    return left, top, left + side, top + side


def comparison_figure(source: Image.Image, mask: np.ndarray, rows: list[ModeRow]) -> Image.Image:
    """Input then each mode, side by side; below each, a zoom on the mask border (nearest x4)."""
    scale = CELL / source.width
    cell_h = round(source.height * scale)
    label_h = 34
    box = _border_box(mask, ZOOM_CROP)
    outline = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
    columns = [("input", source, "")] + [
        (r.mode, r.image, f"PSNR {r.metrics['background_psnr']:.1f}  seam {r.metrics['seam']:.3f}")
        for r in rows
    ]
    fig = Image.new("RGB", (CELL * len(columns), cell_h + CELL + 2 * label_h), "white")
    draw = ImageDraw.Draw(fig)
    for i, (name, im, note) in enumerate(columns):
        x0 = i * CELL
        shown = im.convert("RGB").resize((CELL, cell_h), Image.Resampling.LANCZOS)
        if name == "input":  # mark the mask's outline on the input
            edge = outline.resize((CELL, cell_h)).point(lambda v: 255 if 0 < v < 255 else 0)
            shown.paste((255, 0, 0), mask=edge)
        fig.paste(shown, (x0, 0))
        zoom = im.convert("RGB").crop(box).resize((CELL, CELL), Image.Resampling.NEAREST)
        fig.paste(zoom, (x0, cell_h + label_h))
        draw.text((x0 + 6, cell_h + 4), name, fill="black")
        draw.text((x0 + 6, cell_h + 18), note, fill="black")
        left, top, right, bottom = (round(v * scale) for v in box)
        draw.rectangle((x0 + left, top, x0 + right, bottom), outline=(0, 160, 255))
    draw.text(
        (6, cell_h + CELL + label_h + 8), "zoom: the blue box, on the mask border", fill="black"
    )
    return fig


def comparison_table(rows: list[ModeRow]) -> str:
    """Markdown: background PSNR/SSIM/MSE outside the mask, seam score, reconstruction time."""
    lines = [
        "| background | PSNR outside mask (dB) | SSIM outside mask | MSE outside mask | seam | time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r.metrics
        lines.append(
            f"| {r.mode} | {m['background_psnr']:.2f} | {m['background_ssim']:.4f} | "
            f"{m['background_mse']:.2e} | {m['seam']:.4f} | {r.seconds:.2f} |"
        )
    return "\n".join(lines) + "\n"
