"""An edit request's form, read within the server's limits and turned into an
:class:`~blendedit.api.jobs.EditJob`, with OpenAI's errors (:class:`ApiError`).

The body is read up to ``--max-upload-mb`` (413 beyond it, before anything is parsed); the photo
and the mask are measured from their headers (``--max-side``, ``--max-megapixels``) before any
pixel is decoded. OpenAI's fields that do not apply here are accepted and ignored; blendedit's
own settings come as extra fields by their field names or ``blendedit edit``'s flag names
(:func:`blendedit.options.aliases`), coerced by the field's type (one line naming the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from blendedit.api.jobs import OUTPUT_FORMATS, EditJob, check_image_header
from blendedit.api.settings import ApiOptions
from blendedit.errors import one_line
from blendedit.methods import get_method
from blendedit.options import aliases, coerce_setting, setting_fields

# OpenAI's fields that do not apply to a local edit: accepted, ignored.
IGNORED = (
    "quality", "user", "moderation", "output_compression", "input_fidelity", "partial_images",
    "style",
)  # fmt: skip
OPENAI_BACKGROUNDS = ("auto", "transparent", "opaque")  # OpenAI's ``background``, not blendedit's
MAX_PROMPT = 32000  # characters
RESPONSE_FORMATS = ("b64_json", "url")


class ApiError(Exception):
    """An error as OpenAI's API sends it: status, one-line message, type, param, code."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error", headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type, self.headers = type, headers


@dataclass
class EditForm:
    job: EditJob
    response_format: str  # b64_json or url
    stream: bool  # native endpoint: progress as server-sent events


def _bad(field: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{field}: {message}", param=field, code=code)


async def read_body(request: Request, options: ApiOptions) -> Request:
    """``request`` with its body read up to the server's cap (413 beyond it), for parsing."""
    cap = options.max_body
    too_large = ApiError(
        413, f"image: the request is larger than this server accepts ({options.max_upload_mb:g} "
        "MiB, server option --max-upload-mb)", param="image", code="request_too_large",
    )  # fmt: skip
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise too_large
        chunks.append(chunk)
    body, sent = b"".join(chunks), False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return Request(request.scope, receive)


async def edit_request(
    request: Request, method: str, model: str, options: ApiOptions, *, native: bool
) -> EditForm:
    """The edit the form asks for, checked (400 naming the field, 404 for another model, 413
    for a body over the cap) before the photo is decoded."""
    ctype = request.headers.get("content-type", "").lower()
    if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise _bad("image", "send the request as multipart/form-data", "invalid_content_type")
    body = await read_body(request, options)
    try:
        form = await body.form(max_files=4, max_fields=256, max_part_size=options.max_body)
    except Exception as e:  # a malformed multipart body
        raise _bad("image", f"cannot read the form ({one_line(e)})") from None
    try:
        accept = request.headers.get("accept", "")
        return await _edit_form(form, method, model, options, native, accept)
    finally:
        await form.close()


def _split(form: FormData) -> tuple[dict[str, list[UploadFile]], dict[str, str]]:
    files: dict[str, list[UploadFile]] = {}
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.setdefault(key, []).append(value)
        elif key in fields:
            raise _bad(key, "given more than once")
        else:
            fields[key] = value
    return files, fields


def _int(text: str, field: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise _bad(field, f"{text[:40]!r} is not an integer") from None
    if not low <= value <= high:
        raise _bad(field, f"{value} must be between {low} and {high}")
    return value


def _choice(text: str, field: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise _bad(field, f"{text[:40]!r} is not one of {', '.join(choices)}")
    return text


def _flag(text: str, field: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", ""):
        raise _bad(field, f"{text[:40]!r} is not true or false")
    return value in ("true", "1")


def working_side(text: str) -> int | None:
    """OpenAI's ``size`` here: "auto" (or empty) keeps the method's working size; "WxH" (or a
    number) sets the working long side to the larger of W and H. Results always come at the
    photo's own size."""
    value = text.strip().lower()
    if value in ("", "auto"):
        return None
    w, x, h = value.partition("x")
    parts = (w, h) if x else (w,)
    if not all(p.isdigit() for p in parts):
        raise _bad("size", f"{text[:40]!r} is not 'auto', WxH or a number of pixels")
    return max(int(p) for p in parts)


async def _files(
    files: dict[str, list[UploadFile]], options: ApiOptions
) -> tuple[bytes, bytes | None]:
    images = files.pop("image", []) + files.pop("image[]", [])
    if len(images) != 1:
        raise _bad("image", "send exactly one image file (multipart field 'image')")
    masks = files.pop("mask", [])
    if len(masks) > 1:
        raise _bad("mask", "send at most one mask file")
    for key in files:
        raise _bad(key, "a file was sent where a value was expected")
    image = await images[0].read()
    check_image_header(image, "image", options)
    mask = await masks[0].read() if masks else None
    if mask is not None:
        check_image_header(mask, "mask", options, smallest=1)
    return image, mask


def _settings(fields: dict[str, str], method: str) -> tuple[dict[str, Any], int | None]:
    """The remaining fields as blendedit settings (field name -> value) and the seed."""
    known = setting_fields()
    mine = get_method(method).config.__dataclass_fields__
    names = aliases()
    settings: dict[str, Any] = {}
    seed = None
    for key, text in fields.items():
        name = names.get(key, key)
        if name == "seed":
            seed = _int(text, key, 0, 2**62 - 1)
        elif name == "num_images":
            raise _bad(key, "ask for the number of images with n")
        elif name in known:
            if name not in mine:
                raise _bad(key, f"applies to another method, not {method}")
            if not known[name][0].request:  # it would change the server's model for good
                raise _bad(key, "is not for a request: it changes the server's model for good")
            settings[name] = coerce_setting(name, text, key)
        else:
            raise _bad(key, "unknown field", "unknown_parameter")
    return settings, seed


async def _edit_form(
    form: FormData, method: str, model: str, options: ApiOptions, native: bool, accept: str
) -> EditForm:
    files, fields = _split(form)
    image, mask = await _files(files, options)
    prompt = fields.pop("prompt", None)
    if prompt is None:
        raise _bad("prompt", "required (an empty prompt fills the region from its surroundings)")
    if len(prompt) > MAX_PROMPT:
        raise _bad("prompt", f"{len(prompt)} characters; at most {MAX_PROMPT}")
    n = _int(fields.pop("n", "1"), "n", 1, options.max_n)
    side = working_side(fields.pop("size", "auto"))
    response_format = _choice(fields.pop("response_format", "b64_json"), "response_format",
                              RESPONSE_FORMATS)  # fmt: skip
    fmt = fields.pop("output_format", "png").strip().lower().replace("jpg", "jpeg")
    _choice(fmt, "output_format", OUTPUT_FORMATS)
    wanted = fields.pop("model", "").strip()
    if wanted and wanted != model:
        raise ApiError(
            404, f"model: {wanted[:80]!r} is not served here; this server serves {model!r}",
            param="model", code="model_not_found",
        )  # fmt: skip
    stream = _flag(fields.pop("stream", ""), "stream")
    if stream and not native:
        raise _bad("stream", "not offered here; use POST /v1/blendedit/edits for progress events")
    stream = native and (stream or "text/event-stream" in accept.lower())
    if fields.get("background", "").strip().lower() in OPENAI_BACKGROUNDS:
        del fields["background"]
    for key in IGNORED:
        fields.pop(key, None)
    settings, seed = _settings(fields, method)
    mine = get_method(method).config.__dataclass_fields__
    if side is not None and "size" in mine:
        settings["size"] = side
    if "feather" in mine:  # OpenAI's convention: only the transparent pixels change
        settings.setdefault("feather", 0)
    job = EditJob(image, prompt, mask, n, settings, seed, fmt)
    return EditForm(job, response_format, stream)


__all__ = ["ApiError", "EditForm", "edit_request", "read_body", "working_side"]
