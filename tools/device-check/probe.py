"""Device check, first step (tools/device-check/run.sh): what the machine is and whether blendedit
imports from the image's packages plus the carried wheels.

Writes ``env.json`` (GPU, driver, torch/CUDA, each package's version and where it was loaded from,
the bench presets and flags, a measured bf16 matrix-product rate) and prints two lines run.sh
reads: ``presets: NAME ...`` and ``bench-flags: --FLAG ...``. Exit 1 (one line) if blendedit or
one of the packages it loads at start does not import.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

# Distributions the bench and the GPU tests use; version and location go into env.json.
PACKAGES = [
    "torch",
    "diffusers",
    "transformers",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "accelerate",
    "peft",
    "kornia",
    "kornia_rs",
    "numpy",
    "PIL",
    "cv2",
    "pytest",
]


def _version(name: str, site: Path | None) -> dict[str, object]:
    """Version, folder and whether it came from the carried wheels (installed under ``site``)."""
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # a missing optional one is recorded, not fatal
        return {"version": None, "error": f"{type(e).__name__}: {e}"}
    path = Path(mod.__file__ or "").resolve().parent
    carried = site is not None and path.is_relative_to(site.resolve())
    return {"version": str(getattr(mod, "__version__", "?")), "path": str(path), "carried": carried}


def _nvidia_smi() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _matmul_tflops() -> float | None:
    """bf16 8192x8192x8192 product on random data, median of 20 by CUDA events (METHOD.md)."""
    import torch

    if not torch.cuda.is_available():
        return None
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(5):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e12


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for env.json")
    ap.add_argument("--dry", action="store_true", help="a CPU dry run (recorded in env.json)")
    ap.add_argument("--site", type=Path, help="where run.sh installed the carried wheels")
    ap.add_argument("--budget", type=int, help="run.sh's time budget, s (recorded)")
    args = ap.parse_args()
    try:  # what `blendedit bench` and the test suite's conftest load at start
        import torch

        from blendedit.bench import ARCHITECTURES
        from blendedit.cli import build_parser
    except Exception as e:
        print(f"probe: blendedit does not import here: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    bench = sub.choices["bench"]  # type: ignore[index]
    flags = sorted(o for a in bench._actions for o in a.option_strings if o.startswith("--"))
    env = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "dry_run": args.dry,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "gpu": _nvidia_smi(),
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "bf16_matmul_tflops": _matmul_tflops(),
        "packages": {name: _version(name, args.site) for name in PACKAGES},
        "budget_s": args.budget,
        "presets": list(ARCHITECTURES),
        "bench_flags": flags,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    for name, info in env["packages"].items():
        where = "carried" if info.get("carried") else info.get("path") or info.get("error")
        print(f"  {name:16} {info.get('version')!s:14} {where}")
    if env["bf16_matmul_tflops"]:
        print(f"  bf16 8192^3 matmul: {env['bf16_matmul_tflops']:.0f} TFLOP/s")
    print("presets: " + " ".join(env["presets"]))
    print("bench-flags: " + " ".join(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
