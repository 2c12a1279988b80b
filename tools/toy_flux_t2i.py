"""Text-to-image prompt following of the toy FLUX.1 (``examples/toy-flux``): Euler steps of the
rectified flow (Esser et al. 2024, sec. 2: ``z <- z + (s_next - s) v``) from noise, for random
captions and for the empty prompt (the control), judged by the toy classifier on the whole image.

    nice -n 10 python tools/toy_flux_t2i.py [--folder examples/toy-flux] [--steps 20] [--n 16]

Prints the fraction with the caption's colour, and with its shape and colour; the control's
samples are judged against the same captions. Writes the samples to ``--grid`` (PNG).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


@torch.no_grad()
def sample(folder: Path, prompts: list[str], steps: int, seed: int) -> torch.Tensor:
    """(N, 3, 64, 64) images in [0, 1], one per prompt, as blendedit's FLUX backbone conditions."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel

    from blendedit.latent.backbones.common import image_ids, pack, unpack

    tr = FluxTransformer2DModel.from_pretrained(folder / "transformer").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    te = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    t5 = T5EncoderModel.from_pretrained(folder / "text_encoder_2").eval()
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    n_tok = int(t5.config.n_positions)
    ids = tok(prompts, padding="max_length", max_length=n_tok, truncation=True, return_tensors="pt")
    pooled, ctx = te(ids.input_ids).pooler_output, t5(ids.input_ids)[0]  # (N, 64), (N, T, 64)
    z = torch.randn(len(prompts), 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    sig = torch.linspace(1, 0, steps + 1)
    for i in range(steps):
        v = tr(
            hidden_states=pack(z),
            timestep=sig[i].expand(len(z)),
            pooled_projections=pooled,
            encoder_hidden_states=ctx,
            txt_ids=torch.zeros(n_tok, 3),
            img_ids=image_ids(16, 16),
            return_dict=False,
        )[0]  # fmt: skip  (N, 64, 16)
        z = z + (sig[i + 1] - sig[i]) * unpack(v, 16, 16)
    return (vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1) + 1) / 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=ROOT / "examples" / "toy-flux")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--grid", type=Path, default=Path("/tmp/toy-flux-t2i.png"))
    args = p.parse_args()
    torch.set_flush_denormal(True)
    from blendedit.eval.toyworld import World

    world = World()
    judge = world.classifier()
    cls = np.random.default_rng(0).integers(30, size=args.n)
    prompts = [world.caption(int(c)) for c in cls] + [""] * args.n
    x = sample(args.folder, prompts, args.steps, seed=0)
    pred = judge.classify(x, torch.tensor([[0, 0, 64, 64]] * len(x))).numpy()
    for name, part in (("prompt", pred[: args.n]), ("control (empty prompt)", pred[args.n :])):
        colour, both = (part // 5 == cls // 5).mean(), (part == cls).mean()
        print(f"{name}: colour {colour:.1%}, shape and colour {both:.1%} of {args.n}")
    grid = (x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    rows = [np.concatenate(list(grid[r : r + 8]), 1) for r in range(0, len(grid) - 7, 8)]
    Image.fromarray(np.concatenate(rows, 0)).save(args.grid)


if __name__ == "__main__":
    main()
