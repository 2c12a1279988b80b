"""Train the toy world's realism judge (:mod:`blendedit.eval.toy_realism`): real scenes of the
generator (seed 0) against composites of them (seams of pasted patches, colour shifts, blur,
noise inside a box), binary cross-entropy, Adam. Held-out accuracy on seed-1 scenes is printed
and written beside the weights. A few minutes on 2 CPU cores.

    PYTHONPATH=src python tools/train_toy_realism.py [--steps 400] [--out tools/toy_realism.safetensors]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from blendedit.eval.toy_realism import ToyRealismNet, composite
from blendedit.eval.toyworld import World

ROOT = Path(__file__).resolve().parents[1]


def scenes(world: World, seed: int, n: int) -> np.ndarray:
    """The generator's first ``n`` scenes of ``seed`` (n, 64, 64, 3) uint8 (each costs ~20 ms:
    made once, composited afresh at every step)."""
    return np.stack([world.data.sample(seed, i)[0] for i in range(n)])


def batch(pool: np.ndarray, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, ...]:
    """n images (half real, half composites) (n, 3, 64, 64) in [0, 1] and labels (n,) 1 = real."""
    imgs, labels = [], []
    for k in range(n):
        a = pool[int(rng.integers(len(pool)))]
        if k % 2 == 0:
            imgs.append(a)
            labels.append(1.0)
        else:
            imgs.append(composite(a, pool[int(rng.integers(len(pool)))], rng))
            labels.append(0.0)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(labels)


def accuracy(net: ToyRealismNet, pool: np.ndarray, n: int = 512) -> float:
    x, y = batch(pool, np.random.default_rng(12345), n)  # held-out scenes (seed 1)
    with torch.no_grad():
        return float(((net(x) > 0).float() == y).float().mean())


def main() -> None:
    torch.set_flush_denormal(True)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--scenes", type=int, default=1500, help="training scenes (seed 0)")
    p.add_argument("--out", type=Path, default=ROOT / "tools" / "toy_realism.safetensors")
    args = p.parse_args()
    torch.manual_seed(0)
    world, rng = World(), np.random.default_rng(0)
    t0 = time.perf_counter()
    train, held_out = scenes(world, 0, args.scenes), scenes(world, 1, 300)
    print(f"{len(train)} + {len(held_out)} scenes in {time.perf_counter() - t0:.0f} s")
    net = ToyRealismNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    for step in range(args.steps):
        x, y = batch(train, rng, args.batch)
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
    acc = accuracy(net.eval(), held_out)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out))
    info = {"steps": args.steps, "batch": args.batch, "seconds": round(time.perf_counter() - t0),
            "held_out_accuracy": acc, "parameters": sum(p.numel() for p in net.parameters())}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(info)


if __name__ == "__main__":
    main()
