"""What each ranking judge costs: the real models' parameter counts (built on the meta device
from their published configurations, no download) and the CPU time per candidate of each judge
with the tests' tiny random weights (written in each judge's reference layout). Writes
docs/judges/costs.md.

    PYTHONPATH=src python tools/judge_costs.py [--candidates 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny models and reference layouts

from blendedit.frame import judges as J  # noqa: E402
from blendedit.frame.ranking import ClipScorer  # noqa: E402
from judge_references import (  # noqa: E402
    write_aesthetic,
    write_hps,
    write_imagereward,
    write_pickscore,
)


def _clip(vision: tuple[int, int, int, int], text: tuple[int, int, int], embed: int) -> int:
    """Parameters of a CLIPModel: vision (width, layers, heads, patch), text (width, layers,
    heads), projection width; GELU/QuickGELU does not change the count."""
    from transformers import CLIPConfig, CLIPModel

    vw, vl, vh, patch = vision
    tw, tl, th = text
    cfg = CLIPConfig(
        vision_config={"hidden_size": vw, "num_hidden_layers": vl, "num_attention_heads": vh,
                       "intermediate_size": 4 * vw, "patch_size": patch, "image_size": 224},
        text_config={"hidden_size": tw, "num_hidden_layers": tl, "num_attention_heads": th,
                     "intermediate_size": 4 * tw, "vocab_size": 49408},
        projection_dim=embed,
    )  # fmt: skip
    with torch.device("meta"):
        return sum(p.numel() for p in CLIPModel(cfg).parameters())


def _imagereward() -> int:
    """BLIP ViT-L/16 at 224 + BERT-base with cross-attention (vocab 30524) + the MLP."""
    from transformers import BlipTextConfig, BlipVisionConfig

    from blendedit.frame.imagereward import ImageRewardModel

    vision = BlipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=224, patch_size=16)  # fmt: skip
    text = BlipTextConfig(vocab_size=30524, hidden_size=768, intermediate_size=3072,
                          num_hidden_layers=12, num_attention_heads=12,
                          max_position_embeddings=512, encoder_hidden_size=1024,
                          is_decoder=True)  # fmt: skip
    with torch.device("meta"):
        return sum(p.numel() for p in ImageRewardModel(vision, text).parameters())


def parameter_counts() -> dict[str, tuple[str, int]]:
    mlp = sum(p.numel() for p in J.aesthetic_head(768).parameters())
    vit_h = _clip((1280, 32, 16, 14), (1024, 24, 16), 1024)
    return {
        "clip": ("CLIP ViT-B/16 (openai/clip-vit-base-patch16)",
                 _clip((768, 12, 12, 16), (512, 12, 8), 512)),
        "pickscore": ("CLIP ViT-H/14 (yuvalkirstain/PickScore_v1)", vit_h),
        "hps": ("open_clip ViT-H-14 (HPS v2.1)", vit_h),
        "imagereward": ("BLIP ViT-L/16 + BERT-base with cross-attention + MLP", _imagereward()),
        "aesthetic": ("CLIP ViT-L/14 (openai/clip-vit-large-patch14) + MLP",
                      _clip((1024, 24, 16, 14), (768, 12, 12), 768) + mlp),
    }  # fmt: skip


def tiny_judges(folder: Path) -> dict[str, J.Judge]:
    from tiny_models import tiny_clip, tiny_tokenizer

    clip = ClipScorer(tiny_clip(), tiny_tokenizer(folder / "clip"))
    return {
        "clip": J.ClipJudge(clip),
        "pickscore": J.load_pickscore(str(write_pickscore(folder / "pickscore"))),
        "hps": J.load_hps(str(write_hps(folder / "hps")), "unused/tokenizer"),
        "imagereward": J.load_imagereward(
            str(write_imagereward(folder / "imagereward")), "unused/tokenizer"
        ),
        "aesthetic": J.load_aesthetic(
            str(write_aesthetic(folder / "aesthetic")),
            str(write_pickscore(folder / "aesthetic-clip", seed=2)),
        ),
    }


def time_judges(n: int, repeats: int) -> dict[str, float]:
    """Median ms per candidate of each tiny judge over ``repeats`` batches of ``n`` 64x64 images."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 64, 64, generator=g)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, judge in tiny_judges(Path(tmp)).items():
            judge.score(images, mask, "a red hat")  # warm up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                judge.score(images, mask, "a red hat")
                times.append((time.perf_counter() - t0) / n * 1000)
            out[name] = sorted(times)[len(times) // 2]
    return out


def report(counts: dict[str, tuple[str, int]], ms: dict[str, float], n: int) -> str:
    lines = [
        "# What each judge costs",
        "",
        f"Written by `tools/judge_costs.py` on a {torch.get_num_threads()}-thread CPU "
        f"({platform.machine()}, this sandbox, shared with other jobs), torch {torch.__version__}.",
        "",
        "Parameters: the real models, built from their published configurations on the meta "
        "device (no download). Time: median milliseconds per candidate with the tests' tiny "
        f"random-weight judges (batches of {n} 64x64 candidates), which measures the judge's own "
        "work around the network (PIL conversion, the processor, tokenising) more than the "
        "network, and varies with the other jobs on the machine; the real networks' cost "
        "follows their size (not measured here: no download).",
        "",
        "| judge | sees | model | parameters | tiny: ms per candidate |",
        "|---|---|---|---:|---:|",
    ]
    for name, (model, count) in counts.items():
        lines.append(
            f"| `{name}` | {J.SEES[name]} | {model} | {count / 1e6:.1f} M | {ms[name]:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_flush_denormal(True)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "judges" / "costs.md")
    args = p.parse_args()
    text = report(parameter_counts(), time_judges(args.candidates, args.repeats), args.candidates)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
