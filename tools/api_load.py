"""Load on the API server (``blendedit api``), over loopback: concurrent clients for a bounded time.

Not part of the test suite (``tests/api/test_load.py`` runs a few seconds of it). Starts
``blendedit api`` on 127.0.0.1 (a free port, on the CPU) with tiny random-weight models built in a
temporary folder from ``tests/tiny_models.py``, one API key per client, then for each level of
``--clients`` (default 1, 4 and 16) runs that many clients for ``--seconds`` each: a client sends
``POST /v1/blendedit/edits`` (a 64x64 photo, a mask, ``--steps`` steps, one image), waits for the
answer, and sends the next; a 429 is counted and retried after a short pause. It checks that
every request was answered once (200) or refused (429), none lost and no job id answered twice,
and samples the server's resident memory (RSS) every 100 ms. Prints a Markdown table (and with
``--json`` writes the numbers)::

    python tools/api_load.py --seconds 20 --json /tmp/api-load.json

Only loopback addresses are accepted (``--url http://127.0.0.1:PORT --pid PID`` measures a server
already running on this machine, with ``--key`` if it asks for one).
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIDE = 64


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def request_form(steps: int) -> dict[str, Any]:
    """A 64x64 photo, a mask with a transparent square (OpenAI's convention), one image."""
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), np.uint8))
    alpha = np.full((SIDE, SIDE), 255, np.uint8)
    alpha[16:48, 16:48] = 0
    mask = Image.fromarray(np.dstack([np.zeros((SIDE, SIDE, 3), np.uint8), alpha]), "RGBA")
    files = {"image": ("p.png", _png(photo), "image/png"), "mask": ("m.png", _png(mask))}
    data = {"prompt": "a red square", "n": "1", "num_inference_steps": str(steps), "size": "64"}
    return {"files": files, "data": data}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(values, q))


class RssSampler:
    """The resident memory of process ``pid`` (with its children), every ``every`` seconds."""

    def __init__(self, pid: int | None, every: float = 0.1) -> None:
        import psutil

        self.proc = psutil.Process(pid) if pid else None
        self.samples: list[float] = []
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_mb(self) -> float:
        if self.proc is None:
            return float("nan")
        procs = [self.proc, *self.proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(self.rss_mb())

    def __enter__(self) -> RssSampler:
        self.samples.append(self.rss_mb())
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.rss_mb())


def _client(
    url: str, key: str | None, deadline: float, form: dict[str, Any], out: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=600, headers=headers) as http:
        while time.monotonic() < deadline:
            out["sent"] += 1
            t0 = time.perf_counter()
            try:
                r = http.post(url + "/v1/blendedit/edits", **form)
            except httpx.HTTPError as e:
                out["lost"].append(type(e).__name__)
                continue
            seconds = time.perf_counter() - t0
            if r.status_code == 200:
                out["ok"] += 1
                out["ids"].append(r.json()["id"])
                out["latency"].append(seconds)
            elif r.status_code == 429:
                out["refused"] += 1
                out["retry_after"].append(int(r.headers.get("Retry-After", "0")))
                time.sleep(0.1)
            else:
                out["errors"].append(f"{r.status_code} {r.text[:200]}")


def run_level(
    url: str, clients: int, seconds: float, keys: list[str | None], form: dict[str, Any],
    pid: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``clients`` clients for ``seconds`` (each finishes the request it has started): counts,
    latency, requests per second, and the server's RSS over the level."""
    outs = [
        {"sent": 0, "ok": 0, "refused": 0, "ids": [], "latency": [], "retry_after": [],
         "lost": [], "errors": []}
        for _ in range(clients)
    ]  # fmt: skip
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_client, args=(url, keys[i % len(keys)], deadline, form, outs[i]))
        for i in range(clients)
    ]
    t0 = time.perf_counter()
    with RssSampler(pid) as rss:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.perf_counter() - t0
    ids = [i for o in outs for i in o["ids"]]
    latency = [x for o in outs for x in o["latency"]]
    total = {k: sum(o[k] for o in outs) for k in ("sent", "ok", "refused")}
    lost = [x for o in outs for x in o["lost"]]
    errors = [x for o in outs for x in o["errors"]]
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        **total,
        "lost": len(lost),
        "errors": errors,
        "answered_twice": len(ids) - len(set(ids)),
        "accounted": total["sent"] == total["ok"] + total["refused"] + len(errors) + len(lost),
        "requests_per_s": round(total["ok"] / elapsed, 3),
        "p50_s": _percentile(latency, 50),
        "p95_s": _percentile(latency, 95),
        "rss_mb": {
            "start": round(rss.samples[0], 1),
            "max": round(max(rss.samples), 1),
            "end": round(rss.samples[-1], 1),
        },
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, keys: list[str], args: argparse.Namespace) -> tuple[Any, str]:
    """``blendedit api`` on 127.0.0.1 over tiny models built in ``folder``: (process, URL)."""
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from diffusers import StableDiffusionPipeline

    from tiny_models import (
        tiny_clip,
        tiny_scheduler,
        tiny_text_encoder,
        tiny_tokenizer,
        tiny_unet,
        tiny_vae,
    )  # fmt: skip

    torch.manual_seed(0)
    StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=tiny_tokenizer(folder / "v"),
        unet=tiny_unet(), scheduler=tiny_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder / "tiny-sd")  # fmt: skip
    tiny_clip().save_pretrained(folder / "tiny-clip")
    tiny_tokenizer(folder / "tiny-clip")
    port = _free_port()
    cmd = [
        sys.executable, "-c", "import sys; from blendedit.cli import main; sys.exit(main())",
        "api", "--model", str(folder / "tiny-sd"), "--clip-model", str(folder / "tiny-clip"),
        "--device", "cpu", "--offline", "--host", "127.0.0.1", "--port", str(port), "--quiet",
        "--max-queue", str(args.max_queue), "--per-key", "2",
        *[a for k in keys for a in ("--api-key", k)],
    ]  # fmt: skip
    # One flushed thread, as the tests run: tiny random models make subnormal floats, which
    # OpenMP workers (not flushed) compute up to 30x slower.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"the server did not start ({line!r})")
    return proc, f"http://127.0.0.1:{port}"


def markdown(levels: list[dict[str, Any]], steps: int) -> str:
    rows = [
        "| clients | s | answered (200) | refused (429) | lost | answered twice | req/s | "
        "p50 s | p95 s | RSS MiB start / max / end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in levels:
        m = r["rss_mb"]
        rows.append(
            f"| {r['clients']} | {r['seconds']:.0f} | {r['ok']} | {r['refused']} | "
            f"{r['lost'] + len(r['errors'])} | {r['answered_twice']} | {r['requests_per_s']:.2f} "
            f"| {r['p50_s']:.2f} | {r['p95_s']:.2f} | {m['start']:.0f} / {m['max']:.0f} / "
            f"{m['end']:.0f} |"
        )
    cpu = platform.processor() or platform.machine()
    head = (
        f"{platform.system()} {cpu}, {os.cpu_count()} CPU cores, no GPU; tiny random-weight SD "
        f"model, 64x64 photo, {steps} steps, n=1, `POST /v1/blendedit/edits`"
    )
    return head + "\n\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,4,16", help="levels, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0, help="per level")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max-queue", type=int, default=8, help="the started server's --max-queue")
    p.add_argument("--url", help="a running server on loopback (else one is started)")
    p.add_argument("--pid", type=int, help="its process id, for RSS")
    p.add_argument("--key", help="its API key")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    form = request_form(args.steps)
    with tempfile.TemporaryDirectory(prefix="api-load-") as tmp:
        proc = None
        if args.url:
            host = urlparse(args.url).hostname or ""
            if not (host == "localhost" or ipaddress.ip_address(host).is_loopback):
                raise SystemExit("--url: only loopback addresses")
            url, pid, keys = args.url.rstrip("/"), args.pid, [args.key]
        else:
            keys = [f"load-key-{i}" for i in range(max(levels))]
            proc, url = start_server(Path(tmp), keys, args)
            pid = proc.pid
        try:
            run_level(url, 1, 2.0, keys, form, pid)  # warm-up, not reported
            results = [run_level(url, c, args.seconds, keys, form, pid) for c in levels]
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    print(markdown(results, args.steps))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    bad = [r for r in results if not r["accounted"] or r["lost"] or r["answered_twice"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
