"""The HTTP API over a :class:`~blendedit.api.backend.Backend` (:func:`create_app`).

* ``POST /v1/images/edits``: OpenAI's images/edits (multipart ``image``, ``mask``, ``prompt``,
  ``n``, ``size``, ``response_format``, ``output_format``, ``model``), plus blendedit's settings
  as extra form fields by their field names or ``blendedit edit``'s flag names.
* ``POST /v1/blendedit/edits``: the same form; JSON with seeds, scores, timings and settings, or
  with ``stream=true`` (or ``Accept: text/event-stream``) server-sent ``progress`` events, then
  ``result``.
* ``GET /v1/models``, ``GET /healthz``, ``GET /v1/results/{name}`` (a ``url`` result).

Every error is OpenAI's JSON (``{"error": {"message", "type", "param", "code"}}``) with its
status code, in one line that names the field and never a server path.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from blendedit.api.backend import Backend, Busy
from blendedit.api.forms import ApiError, edit_request
from blendedit.api.jobs import EXTENSIONS, MEDIA_TYPES, JobResult
from blendedit.api.settings import ApiOptions
from blendedit.errors import BlendEditError, Cancelled, TimeLimitError, one_line
from blendedit.io import write_atomic

logger = logging.getLogger("blendedit.api")
_RESULT_NAME = re.compile(r"[A-Za-z0-9_-]{32}\.(png|jpg|webp)")


def error_response(e: ApiError) -> JSONResponse:
    body = {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}
    return JSONResponse(body, status_code=e.status, headers=e.headers)


class ResultStore:
    """The ``url`` results: files with unguessable names in one folder, deleted after
    ``seconds``."""

    def __init__(self, folder: str | None, seconds: float) -> None:
        self.own = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="blendedit-api-results-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seconds = seconds
        self._lock = threading.Lock()

    def put(self, data: bytes, fmt: str) -> str:
        self.sweep()
        name = f"{secrets.token_urlsafe(24)}.{EXTENSIONS[fmt]}"
        write_atomic(self.folder / name, lambda f: f.write(data))
        return name

    def path(self, name: str) -> Path | None:
        if not _RESULT_NAME.fullmatch(name):
            return None
        path = self.folder / name
        return path if path.is_file() else None

    def sweep(self) -> None:
        cutoff = time.time() - self.seconds
        with self._lock:
            for path in self.folder.iterdir():
                if _RESULT_NAME.fullmatch(path.name) and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.own:
            shutil.rmtree(self.folder, ignore_errors=True)


def _job_error(e: BaseException) -> ApiError:
    """What a failed job tells its client."""
    if isinstance(e, Busy):
        return ApiError(
            429, str(e), code=e.code, type="rate_limit_error",
            headers={"Retry-After": str(e.retry_after)},
        )  # fmt: skip
    if isinstance(e, TimeLimitError):
        return ApiError(500, one_line(e), code="time_limit", type="server_error")
    if isinstance(e, Cancelled):
        return ApiError(499, one_line(e), code="cancelled", type="invalid_request_error")
    if isinstance(e, BlendEditError):  # a bad input found while reading or editing
        message = one_line(e)
        head = message.split(":", 1)[0]
        param = head if re.fullmatch(r"[a-z_]+", head) else None
        return ApiError(400, message, param=param, code="invalid_value")
    logger.exception("the edit failed")
    return ApiError(500, f"the edit failed: {one_line(e)}", type="server_error", code=None)


def _images(result: JobResult, response_format: str, base_url: str, store: ResultStore) -> list:
    if response_format == "url":
        return [
            {"url": f"{base_url}v1/results/{store.put(data, result.format)}"}
            for data in result.images
        ]
    return [{"b64_json": base64.b64encode(data).decode("ascii")} for data in result.images]


def _native(result: JobResult, images: list[dict[str, Any]], model: str) -> dict[str, Any]:
    """The native endpoint's body: the images with their seed and score, and result.json."""
    return {
        "id": result.id,
        "created": int(time.time()),
        "model": model,
        "output_format": result.format,
        "size": f"{result.size[0]}x{result.size[1]}",
        "data": [
            {**image, "rank": i + 1, "seed": seed, "score": score}
            for i, (image, seed, score) in enumerate(
                zip(images, result.seeds, result.scores, strict=True)
            )
        ],
        "seeds": result.seeds,
        "scores": result.scores,
        "timings": result.timings,
        "seconds": result.seconds,
        "settings": result.settings,
    }


async def _wait(request: Request, pending: Awaitable[JobResult], left: threading.Event) -> Any:
    """The job's result; the job is stopped if the client goes away while it waits."""
    task = asyncio.ensure_future(pending)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                left.set()
    finally:
        if not task.done():
            left.set()
            task.cancel()


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _stream(
    submit: Callable[..., Awaitable[JobResult]], finish: Callable[..., Any]
) -> StreamingResponse:
    """Server-sent events: ``progress`` (done, total) as the steps run, then ``result`` (or
    ``error``). Admission (429) happens before the stream starts."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    left = threading.Event()

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (done, total))

    pending = asyncio.ensure_future(submit(progress, left.is_set))

    async def events() -> AsyncIterator[bytes]:
        try:
            yield _sse("queued", {"status": "queued"})
            while not pending.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, pending}, return_when="FIRST_COMPLETED")
                if getter in done:
                    d, t = getter.result()
                    yield _sse("progress", {"done": d, "total": t})
                else:
                    getter.cancel()
            try:
                yield _sse("result", finish(pending.result()))
            except Exception as e:  # the job's failure, as the error JSON
                err = _job_error(e)
                body = {"message": err.message, "type": err.type, "param": err.param}
                yield _sse("error", {"error": {**body, "code": err.code, "status": err.status}})
        finally:
            left.set()  # the client went away: stop the job (a no-op once it is done)
            if not pending.done():
                pending.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _keys_check(options: ApiOptions) -> Callable[[Request], str]:
    keys = [k.encode() for k in options.api_keys]

    def key_of(request: Request) -> str:
        """The caller's key (its bearer token), or its address when no key is asked."""
        if not keys:
            return f"address:{request.client.host if request.client else '?'}"
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401, "no API key: send it as 'Authorization: Bearer KEY'", type="invalid_request_error",
                code="invalid_api_key",
            )  # fmt: skip
        given = token.strip().encode()
        if not any(hmac.compare_digest(given, k) for k in keys):
            raise ApiError(
                401, "incorrect API key", type="invalid_request_error", code="invalid_api_key"
            )
        return "key:" + token.strip()

    return key_of


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = {404: "no such endpoint", 405: "method not allowed"}.get(
            e.status_code, one_line(Exception(str(e.detail)))
        )
        code = "unknown_url" if e.status_code == 404 else None
        return error_response(ApiError(e.status_code, message, code=code))

    @app.exception_handler(Exception)
    async def failure(request: Request, e: Exception) -> JSONResponse:
        logger.exception("request failed")
        return error_response(_job_error(e))


def create_app(backend: Backend, options: ApiOptions) -> FastAPI:
    """The API app over ``backend``, with ``options``' limits and keys."""
    store = ResultStore(options.results_dir, options.url_seconds)
    key_of = _keys_check(options)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            store.close()

    app = FastAPI(title="blendedit API", lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return backend.health()

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        key_of(request)
        model = {
            "id": backend.model,
            "object": "model",
            "created": started,
            "owned_by": "blendedit",
        }
        return {"object": "list", "data": [model]}

    @app.get("/v1/results/{name}")
    async def result_file(name: str) -> Response:
        path = store.path(name)
        if path is None:
            raise ApiError(
                404, "no such result (it may have expired)", param="name", code="not_found"
            )
        return FileResponse(path, media_type=MEDIA_TYPES[_format_of(name)])

    async def edit(request: Request, native: bool) -> Response:
        key = key_of(request)
        base = str(request.base_url)

        def finish(result: JobResult) -> dict[str, Any]:
            images = _images(result, form.response_format, base, store)
            if native:
                return _native(result, images, backend.model)
            size = f"{result.size[0]}x{result.size[1]}"
            return {"created": int(time.time()), "data": images, "output_format": result.format,
                    "size": size}  # fmt: skip

        def submit(progress: Any, stop: Any) -> Awaitable[JobResult]:
            return backend.submit(form.job, key=key, progress=progress, stop=stop)

        try:
            form = await edit_request(
                request, backend.method, backend.model, options, native=native
            )
            backend.check(form.job)
            if form.stream:
                return _stream(submit, finish)
            left = threading.Event()
            result = await _wait(request, submit(None, left.is_set), left)
        except (Busy, BlendEditError) as e:
            raise _job_error(e) from None
        return JSONResponse(await asyncio.to_thread(finish, result))

    @app.post("/v1/images/edits")
    async def images_edits(request: Request) -> Response:
        return await edit(request, native=False)

    @app.post("/v1/blendedit/edits")
    async def native_edits(request: Request) -> Response:
        return await edit(request, native=True)

    return app


def _format_of(name: str) -> str:
    ext = name.rsplit(".", 1)[-1]
    return {v: k for k, v in EXTENSIONS.items()}[ext]


__all__ = ["ApiError", "ResultStore", "create_app", "error_response"]
