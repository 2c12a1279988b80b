"""Train the toy world's transformer: a small FLUX.1-schnell-shaped ``FluxTransformer2DModel`` on
the toy VAE's latents, so the transformer step caches (issue 24) can be measured on a trained
model.

Rectified flow (Esser et al. 2024, sec. 2 and 3.1; FLUX.1's objective): ``z_s = (1 - s) z0 + s e``
with ``s`` drawn logit-normal (sec. 3.1, m = 0, std 1), the transformer predicting the velocity
``e - z0`` from ``z_s`` at timestep ``s`` (the scheduler's ``sigma``); 10% empty captions. Frozen
and reused from the toy world (``../shared/toyworld/toy-sd``): the VAE (4 x 16 x 16 latents of
64 px scenes, no shift factor; its latents pack 2 x 2 into 16 values per token: 64 image tokens)
and the CLIP text tower (the pooled output, FLUX's ``text_encoder``). FLUX's ``text_encoder_2``
(T5) is a tiny random ``T5EncoderModel``, frozen, reading the same word-level CLIP tokenizer
(16 tokens: blendedit caps FLUX.1-schnell's 256 at the T5's ``n_positions``, 16 here); the transformer
learns to read both. No guidance embedding (FLUX.1 schnell's shape): blendedit runs FLUX.1 with
the conditional prediction only (no classifier-free guidance), as FluxPipeline does.

    nice -n 5 python tools/train_toy_transformer.py examples/toy-flux [--minutes 22]
    nice -n 5 python tools/train_toy_transformer.py examples/toy-flux --resume examples/toy-flux \
        --minutes 30 --lr 5e-4 --warmup 20 --object-weight 3

``--resume FOLDER`` continues from a saved folder's transformer (same architecture; fresh
optimizer, short warm-up, cosine from ``--lr``). ``--object-weight w`` weighs the loss on the
tokens of the main object's box ``w`` times the rest (object-sized content is what a BLD edit
draws inside its mask; the labels give the box).

writes a ``FluxPipeline`` folder (``blendedit edit --model examples/toy-flux --size 64``). Training
scenes: generator seed 0 (the toy world's training seed); the evaluation's are seed 1. Measured
by ``tools/cache_quality.py --model toy-flux`` (its uncached and control rows: prompt following).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from blendedit.eval.toyworld import import_world, world_dir  # noqa: E402

T5_TOKENS = 16  # blendedit's T5 length: FLUX.1 schnell's 256, capped by the T5's n_positions
CLIP_TOKENS = 16  # the toy tokenizer's model_max_length


def make_transformer():
    """FLUX.1's layout in miniature: 1 double-stream and 3 single-stream blocks, 2 heads of 32;
    rotary axes (8, 12, 12) as FLUX's (16, 56, 56) split the head."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=3, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=64,
        guidance_embeds=False, axes_dims_rope=(8, 12, 12),
    )  # fmt: skip


def make_t5():
    """A tiny frozen random T5 encoder over the toy tokenizer's 102 ids."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(1)
    cfg = T5Config(
        vocab_size=102, d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4,
        pad_token_id=101, decoder_start_token_id=0, n_positions=T5_TOKENS,
    )  # fmt: skip
    return T5EncoderModel(cfg).eval()


def lr_at(step: int, progress: float, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak at ``progress`` 1 (the larger of the
    steps' and the time budget's fractions)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, progress)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def encode_scenes(data, vae, n: int, cache: Path) -> tuple[torch.Tensor, np.ndarray]:
    """Scenes 0..n-1 of seed 0 -> scaled latents (n, 4, 16, 16) and labels (n, 6), cached."""
    if cache.is_file():
        z = np.load(cache)
        if len(z["latents"]) >= n:
            return torch.from_numpy(z["latents"][:n]).float(), z["labels"][:n]
    pairs = [data.sample(data.TRAIN_SEED, i) for i in range(n)]
    images, labels = np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])
    zs = []
    for i in range(0, n, 256):
        x = torch.from_numpy(images[i : i + 256]).permute(0, 3, 1, 2).float() / 127.5 - 1
        zs.append(vae.encode(x).latent_dist.mode() * vae.config.scaling_factor)
    z = torch.cat(zs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, latents=z.half().numpy(), labels=labels)
    return z, labels


@torch.no_grad()
def encode_captions(te, t5, tok, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """As blendedit's FLUX backbone: CLIP pooled (16 tokens) and T5 states (256 tokens)."""
    ids = tok(captions, padding="max_length", max_length=CLIP_TOKENS, truncation=True,
              return_tensors="pt").input_ids  # fmt: skip
    pooled = te(ids, output_hidden_states=False).pooler_output  # (N, 64)
    ids2 = tok(captions, padding="max_length", max_length=T5_TOKENS, truncation=True,
               return_tensors="pt").input_ids  # fmt: skip
    return t5(ids2)[0], pooled  # (N, 256, 64), (N, 64)


def object_weights(labels: np.ndarray, w: float) -> torch.Tensor:
    """(N, 64) per-token loss weights: ``w`` on the 8 x 8 token grid's cells (8 px each) that the
    main object's box [size, cx, cy] = labels[:, 2:5] touches, 1 elsewhere; mean 1 per scene."""
    s, cx, cy = (torch.from_numpy(labels[:, k].astype(np.float32)) for k in (2, 3, 4))
    c = torch.arange(8).float() * 8  # cell left/top edges in px
    inx = (c + 8 > (cx - s / 2)[:, None]) & (c < (cx + s / 2)[:, None])  # (N, 8)
    iny = (c + 8 > (cy - s / 2)[:, None]) & (c < (cy + s / 2)[:, None])  # (N, 8)
    m = (iny[:, :, None] & inx[:, None, :]).reshape(-1, 64).float()  # (N, 64) row-major as pack
    wt = 1 + (w - 1) * m
    return wt / wt.mean(1, keepdim=True)


def train(model, latents, y_all, text, args, log, weights=None) -> torch.nn.Module:
    """Flow matching with EMA; stops at ``args.steps`` or ``args.minutes``. Returns the EMA.
    ``weights`` (N, 64): per-token loss weights (:func:`object_weights`), or None."""
    from blendedit.latent.backbones.common import image_ids, pack

    t5_all, pooled_all = text
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    img_ids, txt_ids = image_ids(16, 16), torch.zeros(T5_TOKENS, 3)
    bs, t0, run, empty = args.batch, time.time(), 0.0, len(t5_all) - 1
    step, progress = 0, 0.0
    while progress < 1.0:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress, args.lr, args.warmup)
        idx = torch.randint(len(latents), (bs,), generator=gen)
        z0, y = latents[idx], y_all[idx].clone()
        y[torch.rand(bs, generator=gen) < 0.1] = empty  # 10% empty captions
        s = torch.sigmoid(torch.randn(bs, generator=gen))  # logit-normal(0, 1)
        e = torch.randn(z0.shape, generator=gen)
        zs = (1 - s.view(-1, 1, 1, 1)) * z0 + s.view(-1, 1, 1, 1) * e
        pred = model(
            hidden_states=pack(zs),
            timestep=s,
            pooled_projections=pooled_all[y],
            encoder_hidden_states=t5_all[y],
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]  # fmt: skip  (B, 64, 16)
        err = (pred - pack(e - z0)).pow(2).mean(-1)  # (B, 64)
        loss = (err * weights[idx]).mean() if weights is not None else err.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        run = loss.item() if step == 0 else 0.98 * run + 0.02 * loss.item()
        if step % 100 == 0:
            log(f"step {step} loss {loss.item():.4f} (avg {run:.4f}) lr {g['lr']:.2e}")
        step += 1
        progress = max(step / args.steps, (time.time() - t0) / (args.minutes * 60))
    log(f"stopped after {step} steps of {bs} (avg loss {run:.4f})")
    return ema.eval()


def save(out: Path, transformer, world: Path, t5) -> None:
    """A FluxPipeline folder: the toy VAE, CLIP text tower and tokenizer, the T5, the scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    sd = world / "toy-sd"
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),  # FLUX.1 schnell's: no shift
        vae=AutoencoderKL.from_pretrained(sd / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(sd / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(sd / "tokenizer"),
        text_encoder_2=t5, tokenizer_2=CLIPTokenizer.from_pretrained(sd / "tokenizer"),
        transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--world", type=Path, default=None, help="default: ../shared/toyworld")
    p.add_argument("--scenes", type=int, default=8000)
    p.add_argument("--steps", type=int, default=4000, help="the schedule's length")
    p.add_argument("--minutes", type=float, default=22.0, help="stop training after this long")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    p.add_argument("--resume", type=Path, help="continue from this folder's transformer")
    p.add_argument("--object-weight", type=float, default=1.0, help="loss weight, object's box")
    p.add_argument("--cache", type=Path, default=Path("/tmp/toy-flux-latents.npz"))
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    world = args.world or world_dir()
    data = import_world(world, "data")
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    vae = AutoencoderKL.from_pretrained(world / "toy-sd" / "vae").eval()
    latents, labels = encode_scenes(data, vae, args.scenes, args.cache)
    log(f"{len(latents)} latents {tuple(latents.shape[1:])}, std {latents.std():.3f}")
    te = CLIPTextModel.from_pretrained(world / "toy-sd" / "text_encoder").eval()
    tok = CLIPTokenizer.from_pretrained(world / "toy-sd" / "tokenizer")
    t5 = make_t5()
    if args.resume:  # the saved T5 (make_t5's, seed 1) and transformer
        from diffusers import FluxTransformer2DModel
        from transformers import T5EncoderModel

        t5 = T5EncoderModel.from_pretrained(args.resume / "text_encoder_2").eval()
    text = encode_captions(te, t5, tok, [*data.CAPTIONS, ""])  # 30 = the empty caption
    y_all = torch.from_numpy(labels[:, 1].astype(np.int64) * len(data.SHAPES) + labels[:, 0])
    torch.manual_seed(0)
    model = make_transformer()
    if args.resume:
        model = FluxTransformer2DModel.from_pretrained(args.resume / "transformer").train()
        log(f"resumed from {args.resume}")
    weights = object_weights(labels, args.object_weight) if args.object_weight != 1 else None
    log(f"FluxTransformer2DModel {sum(q.numel() for q in model.parameters()) / 1e6:.2f}M params")
    ema = train(model, latents, y_all, text, args, log, weights)
    save(args.out, ema, world, t5)
    log(f"saved {args.out}")


if __name__ == "__main__":
    main()
