"""Helpers of the API tests: the server on 127.0.0.1 (a free port) in this process, PNG bytes,
the request's constants."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image

from blendedit.api.app import create_app
from blendedit.api.settings import ApiOptions

KEY = "test-key-1"
FAST = {"num_inference_steps": "3"}  # form fields: what a client sends
SIDE = 64
HOLE = (16, 16, 40, 40)  # x0, y0, x1, y1: the transparent square of the mask


@contextmanager
def running(backend: Any, options: ApiOptions) -> Iterator[str]:
    """``create_app(backend, options)`` served by uvicorn on 127.0.0.1 (a free port): its URL."""
    import uvicorn

    app = create_app(backend, options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
