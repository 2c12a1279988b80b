"""Memory bombs against the web editor, over loopback, with the server's memory sampled.

Not part of the test suite (``tests/security/test_web_bomb_load.py`` runs a few requests of it).
Starts ``blendedit serve`` on 127.0.0.1 (a free port) with tiny random-weight models built in a
temporary folder from ``tests/tiny_models.py`` (or measures a server already running on this
machine: ``--url http://127.0.0.1:PORT/ --pid PID``), then:

1. a normal upload and Generate (the warm-up: the model's own working memory is not a bomb's);
2. the idle level: the server's resident memory (RSS, with its children) after that;
3. ``--requests`` bombs, at most ``--concurrency`` at a time, round-robin over the kinds below,
   each a small file whose header says it is huge (a 14000x14000 1-bit PNG, 24 KB: 0.77 GB as
   the RGBA Gradio decodes a layer to);
4. a normal Generate again, which must succeed.

The bombs (``--kinds``): ``layer-file`` (uploaded, then sent as the editor's paint layer),
``layer-blob`` (sent the way the page sends its layers, ``accept_blobs``), ``many-layers`` (100
layers that are each that file), ``photo`` (the file as the photo) and ``blob-flood`` (32 MiB
sent as a page's layer, under a new page id each time, and never used: what the server keeps of
it). RSS is sampled every 20 ms
from before the warm-up to the end; the server is stopped (and the run marked) if it passes
``--rss-limit-gb``, to spare the machine. Prints (and with ``--json`` writes) the numbers::

    python tools/bomb_load.py --requests 30 --json /tmp/bombs.json

Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
KINDS = ("layer-file", "layer-blob", "many-layers", "photo", "blob-flood")
FLOOD_BYTES = 32 * 1024 * 1024  # one blob-flood request: a PNG header and 32 MiB after it
BOMB_SIDE = 14000
GB = 1024**3


# -- the server ------------------------------------------------------------------------------------


def tiny_models(folder: Path) -> tuple[Path, Path]:
    """A tiny random-weight SD model and CLIP, as the test suite's fixtures build them."""
    sys.path.insert(0, str(REPO / "tests"))
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
        vae=tiny_vae(), text_encoder=tiny_text_encoder(),
        tokenizer=tiny_tokenizer(folder / "vocab"), unet=tiny_unet(), scheduler=tiny_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder / "tiny-sd")
    tiny_clip().save_pretrained(folder / "tiny-clip")
    tiny_tokenizer(folder / "tiny-clip")
    return folder / "tiny-sd", folder / "tiny-clip"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(folder: Path, extra: list[str]) -> Iterator[tuple[str, int]]:
    """``blendedit serve`` on 127.0.0.1 with tiny models; yields (URL, pid)."""
    sd, clip = tiny_models(folder)
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(folder / "gradio"),
        "TMPDIR": str(folder), "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    cmd = [
        sys.executable, "-m", "blendedit.cli", "serve", "--model", str(sd), "--clip-model",
        str(clip), "--device", "cpu", "--offline", "--host", "127.0.0.1", "--port",
        str(free_port()), *extra,
    ]  # fmt: skip
    log = open(folder / "server.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=180)
        if not line or not line[0].startswith("http://127.0.0.1:"):
            log.seek(0)
            raise SystemExit(f"blendedit serve printed no URL:\n{log.read()[-2000:]}")
        yield line[0].strip(), proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class Sampler:
    """The server's RSS (with its children), every 20 ms, in a thread; stops the server above
    ``limit`` bytes."""

    def __init__(self, pid: int, limit: int) -> None:
        self.proc, self.limit = psutil.Process(pid), limit
        self.samples: list[tuple[float, int]] = []
        self.exceeded = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        procs = [self.proc, *self.proc.children(recursive=True)]
        total = 0
        for p in procs:
            with suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.rss()
            except psutil.Error:
                return
            self.samples.append((time.monotonic(), value))
            if value > self.limit and not self.exceeded:
                self.exceeded = True
                self.proc.kill()
                return
            time.sleep(0.02)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def peak(self, since: float = 0.0) -> int:
        return max((v for t, v in self.samples if t >= since), default=0)


# -- the page's API ------------------------------------------------------------------------------


class Page:
    """One browser tab's worth of requests to the editor (its own session)."""

    def __init__(self, url: str, config: dict[str, Any], timeout: float) -> None:
        self.url = url.rstrip("/")
        self.api = f"{self.url}/gradio_api"
        self.session = secrets.token_hex(8)
        self.http = httpx.Client(timeout=timeout, trust_env=False)
        self.config = config
        comps = {c["id"]: c for c in config["components"]}
        self.comps = comps
        self.deps = {d["api_name"]: (i, d) for i, d in enumerate(config["dependencies"])}
        self.editor_id = next(
            c["id"] for c in config["components"] if c["props"].get("elem_id") == "editor"
        )

    def close(self) -> None:
        self.http.close()

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        r = self.http.post(f"{self.api}/upload", files=[("files", (name, data, "image/png"))])
        r.raise_for_status()
        path = r.json()[0]
        return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def blob(self, blob_id: str, kind: str, data: bytes, index: int | None = None) -> int:
        fields = {
            "component_id": str(self.editor_id), "session_hash": self.session,
            "fn_name": "accept_blobs", "id": blob_id, "type": kind,
            "index": "null" if index is None else str(index),
        }  # fmt: skip
        r = self.http.post(
            f"{self.api}/component_server", data=fields,
            files=[("file", (f"{kind}.png", data, "image/png"))],
        )  # fmt: skip
        return r.status_code

    def call(self, api_name: str, values: dict[str, Any]) -> dict[str, Any]:
        """Run an event with its inputs by elem_id (others at the page's defaults, the state
        none); returns the final message (``success``, ``output``)."""
        index, dep = self.deps[api_name]
        data = []
        for cid in dep["inputs"]:
            c = self.comps[cid]
            key = c["props"].get("elem_id")
            data.append(values[key] if key in values else c["props"].get("value"))
        body = {
            "data": data, "fn_index": index, "trigger_id": dep["targets"][0][0],
            "session_hash": self.session, "event_data": None,
        }  # fmt: skip
        r = self.http.post(f"{self.api}/queue/join", json=body)
        r.raise_for_status()
        with self.http.stream(
            "GET", f"{self.api}/queue/data", params={"session_hash": self.session}
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
                if msg.get("msg") in ("unexpected_error", "close_stream"):
                    return {"success": False, "output": msg}
        return {"success": False, "output": "stream ended"}


def _message(done: dict[str, Any]) -> str:
    out = done.get("output") or {}
    if isinstance(out, dict) and out.get("error"):
        return str(out["error"])
    return "" if done.get("success") else json.dumps(out)[:200]


def normal_generate(page: Page, photo: Path) -> str:
    """Upload a photo, paint a box on its canvas, Generate one result: the status line."""
    up = page.call("on_upload", {"photo-file": page.upload(photo.name, photo.read_bytes())})
    if not up.get("success"):
        return f"upload failed: {_message(up)}"
    w, h = Image.open(photo).size  # a photo under the preview side: the canvas is its size
    layer = np.zeros((h, w, 4), np.uint8)
    layer[h // 3 : h // 2, w // 3 : w // 2] = (255, 0, 255, 128)
    buf = io.BytesIO()
    Image.fromarray(layer, "RGBA").save(buf, format="PNG")
    editor = {"background": None, "composite": None, "id": None,
              "layers": [page.upload("layer.png", buf.getvalue())]}  # fmt: skip
    values = {"editor": editor, "prompt": "a hat", "num-images": 1, "steps": 2, "size": 64}
    done = page.call("generate", values)
    if not done.get("success"):
        return f"generate failed: {_message(done)}"
    return str(done["output"]["data"][1]).splitlines()[0]


def bomb(page: Page, kind: str, data: bytes) -> str:
    """One bomb of ``kind``; returns what the server said (its one line)."""
    values: dict[str, Any] = {"prompt": "x", "num-images": 1, "steps": 2, "size": 64}
    if kind == "photo":
        done = page.call("on_upload", {"photo-file": page.upload("photo.png", data)})
        out = done.get("output") or {}
        return _message(done) or str((out.get("data") or ["", "", "", ""])[3]).split("\n")[0]
    if kind == "blob-flood":
        code = page.blob(secrets.token_hex(6), "layer", data + bytes(FLOOD_BYTES), index=0)
        return f"accept_blobs: HTTP {code}"
    if kind == "layer-blob":
        blob_id = secrets.token_hex(6)
        page.blob(blob_id, "layer", data, index=0)
        values["editor"] = {"id": blob_id, "background": None, "composite": None, "layers": []}
    else:
        f = page.upload("layer.png", data)
        layers = [f] * (100 if kind == "many-layers" else 1)
        values["editor"] = {"background": None, "composite": None, "id": None, "layers": layers}
    return _message(page.call("generate", values))


# -- the run -------------------------------------------------------------------------------------


def bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"--url: {url} is not a loopback address; this tool sends to none other")


def measure(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    loopback(url)
    sampler = Sampler(pid, int(args.rss_limit_gb * GB)).start()
    http = httpx.Client(timeout=60, trust_env=False)
    config = http.get(f"{url.rstrip('/')}/config").json()
    http.close()
    photo = REPO / "tests" / "data" / "images" / "chelsea.png"
    warm = Page(url, config, args.timeout)
    t0 = time.monotonic()
    first = normal_generate(warm, photo)
    time.sleep(1.0)
    idle = sampler.rss()
    data = bomb_png()
    kinds = [args.kinds[i % len(args.kinds)] for i in range(args.requests)]
    answers: dict[str, list[str]] = {k: [] for k in args.kinds}

    def one(kind: str) -> None:
        page = Page(url, config, args.timeout)
        try:
            answers[kind].append(bomb(page, kind, data))
        except (httpx.HTTPError, OSError) as e:
            answers[kind].append(f"{type(e).__name__}: {e}")
        finally:
            page.close()

    t_bombs = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(one, kinds))
    bombs_s = time.monotonic() - t_bombs
    time.sleep(1.0)
    after = "" if sampler.exceeded else normal_generate(warm, photo)
    end = 0 if sampler.exceeded else sampler.rss()
    warm.close()
    sampler.stop()
    return {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / GB:.0f} GiB, no GPU used (--device cpu)",
        "requests": args.requests, "concurrency": args.concurrency, "bomb_bytes": len(data),
        "bomb_side": BOMB_SIDE, "first_generate": first, "generate_after": after,
        "rss_start_mb": round(sampler.samples[0][1] / 2**20), "rss_idle_mb": round(idle / 2**20),
        "rss_peak_during_bombs_mb": round(sampler.peak(t_bombs) / 2**20),
        "peak_above_idle_mb": round((sampler.peak(t_bombs) - idle) / 2**20),
        "rss_end_mb": round(end / 2**20),
        "bombs_seconds": round(bombs_s, 1), "total_seconds": round(time.monotonic() - t0, 1),
        "stopped_over_rss_limit": sampler.exceeded,
        "answers": {k: sorted(set(v)) for k, v in answers.items()},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=30, help="bombs to send (default 30)")
    p.add_argument("--concurrency", type=int, default=4, help="at once (default 4)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--timeout", type=float, default=300, help="seconds per request (300)")
    p.add_argument("--rss-limit-gb", type=float, default=8.0, help="stop the server above (8)")
    p.add_argument("--url", help="a running server on this machine (with --pid)")
    p.add_argument("--pid", type=int, help="its process id")
    p.add_argument("--json", help="write the numbers here too")
    p.add_argument("serve_args", nargs="*", help="more `blendedit serve` options (after --)")
    args = p.parse_args(argv)
    if not 1 <= args.requests <= 1000 or not 1 <= args.concurrency <= 32:
        raise SystemExit("--requests: 1 to 1000; --concurrency: 1 to 32")
    if args.url:
        if args.pid is None:
            raise SystemExit("--url needs --pid (the server's process, to sample its memory)")
        result = measure(args.url, args.pid, args)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="bomb-load-") as tmp,
            serve(Path(tmp), args.serve_args) as (url, pid),
        ):
            result = measure(url, pid, args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    ok = result["generate_after"].startswith("1 result") and not result["stopped_over_rss_limit"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
