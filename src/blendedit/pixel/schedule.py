"""ADM's noise schedules: the original betas and the timesteps a respacing keeps.

Our own implementation of guided-diffusion's ``get_named_beta_schedule`` and ``space_timesteps``
(conventions in ``shared/reference/adm/README.md``): DDPM's linear schedule (Ho et al. 2020,
section 4), Improved DDPM's cosine schedule and respacing (Nichol & Dhariwal 2021, eq. 17 and
section 4). Used by the diffusion (:mod:`blendedit.pixel.gaussian`) and to check a model's config
(:class:`blendedit.pixel.adm.ADMConfig`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from blendedit.errors import InputError

F64 = torch.float64


def beta_schedule(name: str, num_steps: int) -> Tensor:
    """The original T betas, float64 (T,). "linear": 1e-4..0.02 scaled by 1000/T (DDPM, sec. 4);
    "cosine": Improved DDPM eq. 17, clipped at 0.999."""
    if name == "linear":
        scale = 1000.0 / num_steps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=F64)
    if name == "cosine":

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        ts = [(i / num_steps, (i + 1) / num_steps) for i in range(num_steps)]
        return torch.tensor([min(1 - alpha_bar(b) / alpha_bar(a), 0.999) for a, b in ts], dtype=F64)
    raise InputError(f"noise_schedule={name!r} is not supported (use 'linear' or 'cosine')")


def space_timesteps(num_steps: int, spec: str) -> list[int]:
    """Original timesteps kept by a respacing string, sorted (Improved DDPM, section 4).

    ``""`` keeps all. ``"ddimN"`` keeps ``range(0, T, s)`` for the smallest stride s giving N steps.
    Otherwise ``"a,b,..."`` splits 0..T−1 into equal sections (the first T mod n one step longer)
    and keeps ``count`` steps of each: start + round(pos), pos summing the float stride
    (size−1)/(count−1), Python's half-to-even ``round``. ``"100"`` over 1000 gives 0, 10, ..., 50, 61.
    """
    spec = str(spec).strip()
    if not spec:
        return list(range(num_steps))
    try:
        if spec.startswith("ddim"):
            want = int(spec[4:])
            for stride in range(1, num_steps):
                if len(range(0, num_steps, stride)) == want:
                    return list(range(0, num_steps, stride))
            raise ValueError
        counts = [int(c) for c in spec.split(",")]
    except ValueError:
        raise InputError(
            f"timestep_respacing={spec!r} is not valid for {num_steps} steps"
        ) from None
    kept, start = [], 0
    for i, count in enumerate(counts):
        size = num_steps // len(counts) + (1 if i < num_steps % len(counts) else 0)
        if not 1 <= count <= size:
            raise InputError(
                f"timestep_respacing={spec!r}: section {i} of {size} steps asks {count}"
            )
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        pos = 0.0
        for _ in range(count):
            kept.append(start + round(pos))
            pos += stride
        start += size
    return sorted(set(kept))
