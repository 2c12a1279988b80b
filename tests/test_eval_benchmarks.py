"""blendedit eval --benchmark: readers of BrushBench / EditBench (BrushNet's release), PIE-Bench
(mapping_file.json, RLE masks) and MagicBrush (parquet), tested on a few cases written here in
those layouts; BrushBench's metrics; the table with the published rows apart from the measured."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blendedit.cli import main
from blendedit.errors import InputError
from blendedit.eval import benchmarks as B
from judge_references import write_aesthetic, write_hps, write_imagereward, write_pickscore


def _photo(seed: int, side: int = 512) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((side, side), Image.Resampling.BILINEAR)


def _box(side: int = 512) -> np.ndarray:
    m = np.zeros((side, side), dtype=bool)
    m[160:352, 128:384] = True
    return m


def brushnet_rle_of(mask: np.ndarray) -> list[int]:
    """Encode as BrushNet's files do: row order, starts from 1."""
    flat = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    runs = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs[1::2] -= runs[::2]
    return [int(v) for v in runs]


def write_brushbench(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for i in range(n):
        rel = f"images/{i:03d}.jpg"
        (root / "images").mkdir(exist_ok=True)
        _photo(i).save(root / rel, quality=95)
        rle = brushnet_rle_of(_box())
        mapping[f"{i:03d}"] = {"image": rel, "inpainting_mask": rle, "outpainting_mask": rle,
                               "caption": "a red hat"}  # fmt: skip
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def write_pie_bench(root: Path) -> Path:
    (root / "annotation_images" / "0_random").mkdir(parents=True, exist_ok=True)
    _photo(3).save(root / "annotation_images" / "0_random" / "000.jpg")
    rle: list[int] = []
    for r in range(160, 352):  # 0-based starts: PIE-Bench's encoding
        rle += [r * 512 + 128, 256]
    mapping = {"000": {"image_path": "0_random/000.jpg", "original_prompt": "a dog",
                       "editing_prompt": "a [red] hat", "mask": rle, "editing_type_id": "0"}}  # fmt: skip
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def write_magicbrush(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    mask = Image.fromarray((_box() * 255).astype(np.uint8))
    rows = {"img_id": ["327726"], "turn_index": [1],
            "source_img": [{"bytes": png(_photo(4)), "path": None}],
            "mask_img": [{"bytes": png(mask), "path": None}],
            "instruction": ["put a red hat on it"],
            "target_img": [{"bytes": png(_photo(5)), "path": None}]}  # fmt: skip
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), root / "data" / "dev-00000-of-00001.parquet")
    return root


def test_readers_decode_each_layout(tmp_path: Path) -> None:
    """Each layout's masks decode to the same box (BrushNet's 1-based RLE, PIE-Bench's 0-based
    RLE with its border, MagicBrush's white mask), prompts as the benchmark means them."""
    box = _box()
    (bb,) = B.read_benchmark("brushbench", write_brushbench(tmp_path / "bb"), limit=1)
    assert np.array_equal(bb.mask, box) and bb.prompt == "a red hat" and bb.id == "000"
    assert len(B.read_benchmark("editbench", tmp_path / "bb")) == 2
    (pie,) = B.read_benchmark("pie-bench", write_pie_bench(tmp_path / "pie"))
    border = box.copy()
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    assert np.array_equal(pie.mask, border) and pie.prompt == "a red hat"
    (mb,) = B.read_benchmark("magicbrush", write_magicbrush(tmp_path / "mb"))
    assert np.array_equal(mb.mask, box) and mb.prompt == "put a red hat on it"
    assert mb.id == "327726-1" and mb.image.size == (512, 512)
    # One 1-based run of BrushNet's: start 1 is the first pixel.
    assert B.brushnet_rle([1, 3], (2, 4)).reshape(-1).tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_reader_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"has no mapping_file\.json"):
        B.read_benchmark("brushbench", tmp_path)
    with pytest.raises(InputError, match=r"holds no \*\.parquet"):
        B.read_benchmark("magicbrush", tmp_path)
    with pytest.raises(InputError, match="benchmark: 'imagenet' must be one of"):
        B.read_benchmark("imagenet", tmp_path)
    write_brushbench(tmp_path / "bb", 1)
    with pytest.raises(InputError, match="mask_key: 'other'"):
        B.read_benchmark("brushbench", tmp_path / "bb", mask_key="other")


def test_outside_scores_follow_brushnet() -> None:
    """BrushNet's PSNR/MSE outside the mask: both images times the outside mask, the squared
    difference summed over channels, divided by the outside pixels; identical: PSNR 1000."""
    src, mask = _photo(0), _box()
    out = np.asarray(src).copy()
    out[mask] = 0  # only inside changes: nothing outside differs
    same = B.outside_scores(src, Image.fromarray(out), mask)
    assert same["psnr"] == 1000.0 and same["mse"] == 0.0 and same["ssim"] > 0.99
    noisy = np.clip(np.asarray(src).astype(int) + 10, 0, 255).astype(np.uint8)
    got = B.outside_scores(src, Image.fromarray(noisy), mask)
    keep = (~mask)[..., None].astype(np.float32)
    a = np.asarray(src, np.float32) / 255 * keep
    b = noisy.astype(np.float32) / 255 * keep
    mse = ((a - b) ** 2).sum() / keep.sum()
    assert got["mse"] == pytest.approx(mse, rel=1e-5)
    assert got["psnr"] == pytest.approx(20 * math.log10(1 / math.sqrt(mse)), rel=1e-5)


def test_outside_ssim_is_the_project_ssim_outside_the_mask() -> None:
    """torchmetrics' SSIM map, averaged over the windows wholly outside the mask, equals
    masked_ssim(erode=True) (the number before torchmetrics); not the uneroded average."""
    import torch

    from blendedit.frame.metrics import masked_ssim

    g = np.random.default_rng(0)
    src, out = g.random((2, 40, 48, 3))  # (H, W, 3) float64
    keep = np.ones((40, 48))
    keep[10:25, 12:30] = 0  # the mask
    out[10:25, 12:30] = 0  # an edit inside it and noise outside
    got = B.outside_ssim(src, out, keep)

    def t(v: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(v).permute(2, 0, 1)[None]

    want = float(masked_ssim(t(src), t(out), torch.from_numpy(keep), erode=True)[0])
    assert got == pytest.approx(want, abs=1e-10)
    loose = float(masked_ssim(t(src), t(out), torch.from_numpy(keep), erode=False)[0])
    assert abs(got - loose) > 1e-3
    with pytest.raises(InputError, match="mask:"):
        B.outside_ssim(src, out, np.zeros((40, 48)))


def test_brushnet_psnr_is_torchmetrics_psnr_less_10_log10_3() -> None:
    """BrushNet's PSNR (channels summed) is torchmetrics' (per-channel mean) over the outside
    pixels minus 10*log10(3): a different number, kept because the published table uses it."""
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio

    src, mask = _photo(0), _box()
    noisy = np.clip(np.asarray(src).astype(int) + 10, 0, 255).astype(np.uint8)
    got = B.outside_scores(src, Image.fromarray(noisy), mask)
    a = torch.from_numpy(np.asarray(src, np.float64)[~mask] / 255)  # (N, 3) outside pixels
    b = torch.from_numpy(noisy.astype(np.float64)[~mask] / 255)
    tm = float(peak_signal_noise_ratio(b, a, data_range=1.0))
    assert got["psnr"] == pytest.approx(tm - 10 * math.log10(3), abs=1e-4)


def test_torchmetrics_imports_without_torchvision() -> None:
    """The metrics above ran through torchmetrics in a process without torchvision."""
    import torchmetrics.functional.image  # noqa: F401

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    assert "torchvision" not in sys.modules


@pytest.fixture(scope="module")
def judge_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("bench-judges")
    return [
        f"imagereward={write_imagereward(root / 'ir')}",
        f"hps={write_hps(root / 'hps')}",
        f"aesthetic={write_aesthetic(root / 'aes')}",
        f"aesthetic-clip={write_pickscore(root / 'aes-clip', seed=2)}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", B.BENCHMARKS)
def test_eval_benchmark_writes_the_table(
    benchmark: str, tmp_path: Path, tiny_sd_dir: Path, tiny_clip_dir: Path, judge_files: list[str]
) -> None:
    writers = {"brushbench": write_brushbench, "editbench": write_brushbench,
               "pie-bench": write_pie_bench, "magicbrush": write_magicbrush}  # fmt: skip
    data = writers[benchmark](tmp_path / "data")
    out = tmp_path / "out"
    argv = [
        "eval", "--benchmark", benchmark, "--data", str(data), "--out", str(out), "--limit", "1",
        "--model", str(tiny_sd_dir), "--clip-model", str(tiny_clip_dir),
        "--score-clip-model", str(tiny_clip_dir), "--steps", "2", "--batch", "2",
        "--device", "cpu", "--quiet", *[a for j in judge_files for a in ("--judge-model", j)],
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    mean = report["mean"]
    for key in ("imagereward", "hps", "aesthetic", "psnr", "mse", "ssim", "clip", "clip_inside"):
        assert mean[key] is not None and math.isfinite(mean[key]), key
    assert mean["lpips"] is None  # no --lpips-weights: said so, not faked
    text = (out / "report.md").read_text()
    published, measured = text.split("## Measured by blendedit")
    assert "blendedit latent" in measured and "blendedit latent" not in published
    if benchmark == "brushbench":
        assert (
            "| Blended Latent Diffusion | 9.78 | 25.87 |" in published and "NTN-Diff" in published
        )
    if benchmark == "pie-bench":
        assert "No published numbers" in published
    assert len(list((out / "results").glob("*.png"))) == 1
