"""Measure the batch engines with the tiny models (not a test): rows/s of the local engine and of
Ray with 1 and 2 workers, Ray's overhead per row, and the cost of starting a cluster.

Run as root inside a loopback-only network namespace (Ray listens on every interface):

    unshare -n sh -c 'ip link set lo up && RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 \
        RAY_TMPDIR=$(mktemp -d) python tests/batch/bench_batch_ray.py --rows 40'

Steady rate = rows after the first committed one / time from the first commit to the last (model
loading and worker start excluded); first_commit_s = from the call to the first committed row.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_models(root: Path) -> tuple[Path, Path]:
    from diffusers import StableDiffusionPipeline

    from tiny_models import (
        tiny_clip,
        tiny_scheduler,
        tiny_text_encoder,
        tiny_tokenizer,
        tiny_unet,
        tiny_vae,
    )

    pipe = StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=tiny_tokenizer(root / "vocab"),
        unet=tiny_unet(), scheduler=tiny_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(root / "sd")
    tiny_clip().save_pretrained(root / "clip")
    tiny_tokenizer(root / "clip")
    return root / "sd", root / "clip"


def manifest(root: Path, n: int) -> Path:
    import shutil

    from batch_fixtures import PAIRS

    images = HERE.parent / "data" / "images"
    for name in {p for pair in PAIRS for p in pair[:2]}:
        shutil.copy(images / name, root / name)
    rows = [
        {
            "image": PAIRS[i % len(PAIRS)][0],
            "mask": PAIRS[i % len(PAIRS)][1],
            "prompt": PAIRS[i % len(PAIRS)][2],
            "seed": i,
        }
        for i in range(n)
    ]
    path = root / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def timed_run(label: str, m: Path, out: Path, shared, **kw) -> dict:
    from blendedit.batch import run_batch

    stamps: list[float] = []
    t0 = time.perf_counter()
    summary = run_batch(m, out, shared=shared, progress=False, device="cpu", threads=1,
                        on_outcome=lambda o: stamps.append(time.perf_counter()), **kw)  # fmt: skip
    total = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines()]
    inner = sum(r["seconds"] for r in rows) / len(rows)  # process_row's own time per row
    # Commit times (result.json written): the driver receives outcomes in bursts (Ray Data
    # blocks), so its own stamps understate the gaps.
    commits = sorted((out / r["key"] / "result.json").stat().st_mtime for r in rows)
    steady = (len(commits) - 1) / (commits[-1] - commits[0])
    res = {
        "engine": label,
        "rows": len(stamps),
        "done": summary["done"],
        "total_s": round(total, 2),
        "first_commit_s": round(commits[0] - (time.time() - (time.perf_counter() - t0)), 2),
        "first_outcome_s": round(stamps[0] - t0, 2),
        "steady_rows_per_s": round(steady, 3),
        "worker_s_per_row": round(inner, 3),
        **{k: v for k, v in summary["last_run"].items() if k.startswith("ray_")},
    }
    print(json.dumps(res), flush=True)
    return res


def overhead(root: Path, shared, n: int) -> None:
    """Per-row cost of each engine without the edit: rows whose mask is empty fail in the worker
    right after reading their files, so the rate is the engines' own (transport, summary)."""
    import shutil

    import numpy as np
    from PIL import Image

    from blendedit.batch import RayOptions

    d = root / "overhead"
    d.mkdir()
    shutil.copy(HERE.parent / "data" / "images" / "chelsea.png", d / "chelsea.png")
    Image.fromarray(np.zeros((300, 451), np.uint8)).save(d / "empty.png")
    m = d / "m.jsonl"
    rows = [
        {"image": "chelsea.png", "mask": "empty.png", "prompt": "x", "seed": i} for i in range(n)
    ]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from blendedit.batch import run_batch

    for label, kw in (("local", {}), ("ray x1", {"engine": "ray", "ray": RayOptions(workers=1)})):
        stamps: list[float] = []
        run_batch(m, d / label.replace(" ", ""), shared=shared, progress=False, device="cpu",
                  threads=1, on_outcome=lambda o, s=stamps: s.append(time.perf_counter()), **kw)  # fmt: skip
        per_row = (stamps[-1] - stamps[len(stamps) // 4]) / (len(stamps) - 1 - len(stamps) // 4)
        print(
            json.dumps(
                {"overhead": label, "rows": n, "ms_per_failing_row": round(1000 * per_row, 1)}
            ),
            flush=True,
        )


def main() -> None:
    import shutil

    root = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        run(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--overhead-rows", type=int, default=200)
    ap.add_argument("--only-overhead", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    from blendedit.batch import RayOptions, Shared

    sd, clip = tiny_models(root)
    m = manifest(root, args.rows)
    settings = {"num_inference_steps": 4, "size": 64, "num_images": 2, "batch_size": 2}
    shared = Shared(model=str(sd), clip_model=str(clip), settings=settings)
    import ray

    if args.only_overhead:
        ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 * 2**20,
                 log_to_driver=False)  # fmt: skip
        overhead(root, shared, args.overhead_rows)
        ray.shutdown()
        return
    timed_run("local", m, root / "local", shared)
    t0 = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False)  # fmt: skip
    print(json.dumps({"ray.init in-process s": round(time.perf_counter() - t0, 2)}), flush=True)
    overhead(root, shared, args.overhead_rows)
    for w in (1, 2):
        timed_run(f"ray x{w}", m, root / f"ray{w}", shared, engine="ray",
                  ray=RayOptions(workers=w))  # fmt: skip
    t0 = time.perf_counter()
    ray.shutdown()
    print(json.dumps({"ray.shutdown s": round(time.perf_counter() - t0, 2)}), flush=True)

    # A separate head: `ray start --head --block` until its port answers.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=4",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--object-store-memory=268435456",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        time.sleep(0.05)
    print(json.dumps({"ray start --head s": round(time.perf_counter() - t0, 2)}), flush=True)
    try:
        timed_run("ray head x2", m, root / "head2", shared, engine="ray",
                  ray=RayOptions(address=f"127.0.0.1:{port}", workers=2))  # fmt: skip
    finally:
        import signal

        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


if __name__ == "__main__":
    main()
