"""Batch manifests: one edit per row (JSONL or CSV), checked before any work.

A row names ``image``, ``mask`` and ``prompt`` (an empty prompt is allowed: removal), optionally
``id`` (the row's folder name), ``method``, ``model``, ``model_config``, ``clip_model`` and any edit
setting: a field of :class:`~blendedit.config.EditConfig` (latent) or
:class:`~blendedit.pixel.pipeline.PixelConfig` (pixel, local-clip), by its field name or the
``blendedit edit`` flag's name (``steps``, ``guidance``, ...). Shared settings (the command line, a
preset) are the defaults; a row overrides them. Relative paths are relative to the manifest's folder.

Identity. A row's *key* (its folder name) is its ``id``, else a hash of what the row says: the
image's and mask's content hashes (not their paths), the prompt and the row's own fields. Its
*fingerprint* hashes everything that decides its pixels: the key's inputs plus the effective
settings, method, model and output format. A folder whose fingerprint differs is refused, never
reused; a changed file content gives a new key.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import functools
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blendedit.config import FrameConfig
from blendedit.errors import InputError
from blendedit.io import json_digest, loads_json
from blendedit.methods import METHODS, get_method
from blendedit.options import aliases, setting_hints
from blendedit.options import coerce_setting as _coerce

# Keys that are not edit settings: the inputs, the row's name and what loads the model.
INPUT_KEYS = ("image", "mask", "prompt")
MODEL_KEYS = ("method", "model", "model_config", "clip_model")
ROW_KEYS = (*INPUT_KEYS, "id", *MODEL_KEYS)
# A selection instead of (or joined to) the mask file (issue 21): what a segmenter selects, by
# text, clicks ([x, y] or [x, y, 0] for a negative one; CSV "x,y;-x,y") or a box; its settings.
SELECT_KEYS = ("mask_text", "mask_points", "mask_box", "segmenter")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Shared:
    """Settings every row starts from (the command line / a preset); rows override them."""

    method: str = "latent"
    model: str | None = None  # None: the method's default (latent: DEFAULT_MODEL; pixel: required)
    model_config: str | None = None
    clip_model: str | None = None  # None: blendedit's default ranking CLIP
    preset: str = "default"
    settings: dict[str, Any] = field(default_factory=dict)  # field name -> value
    out_format: str | None = None  # None: the photo's own (png/jpeg/webp), else png
    quality: int | None = None
    metadata: bool = True  # generation parameters in the files
    segmenter: str | None = None  # rows' selections: None = blendedit.segment's default

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Row:
    """One checked manifest row. ``problem`` is set (one line) when its files cannot be read: the
    row is then recorded as failed without loading any model."""

    index: int  # 1-based position among the rows
    line: int  # line in the manifest file (CSV: the header is line 1)
    key: str  # folder name
    fingerprint: str  # hash of everything that decides the outputs
    image: str
    mask: str
    prompt: str
    method: str
    model: str | None
    model_config: str | None
    clip_model: str | None
    settings: dict[str, Any]  # the effective config (to_dict) of the method
    given: dict[str, Any]  # the row as written (after aliases), for the record
    problem: str | None = None
    selection: dict[str, Any] | None = None  # see select_of (None: the mask file alone)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        return cls(**d)

    def config(self) -> FrameConfig:
        cls = get_method(self.method).config
        s = dict(self.settings)
        if "shrink_kernels" in s:
            s["shrink_kernels"] = tuple(s["shrink_kernels"])
        return cls(**s)

    @property
    def name(self) -> str:
        """How errors name the row."""
        return f"row {self.index} (line {self.line})"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Byte order marks and the encodings they name (UTF-32's before UTF-16's: they start alike).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _manifest_text(path: Path) -> str:
    """The manifest's text: UTF-8, or the encoding its byte order mark names (UTF-8, UTF-16 or
    UTF-32, either byte order, as spreadsheet programs save "Unicode text"); anything else (a
    binary file, latin-1 without a mark) is one line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"manifest: cannot read {str(path)!r} ({e.strerror or e})") from None
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        name = encoding.removesuffix("-sig").upper()
        raise InputError(
            f"manifest: {str(path)!r} is not {name} text (byte {e.start}: {e.reason}); save it "
            "as UTF-8, or as UTF-16 with a byte order mark"
        ) from None
    if "\0" in text:
        raise InputError(f"manifest: {str(path)!r} holds NUL characters: not a text file")
    return text


def _jsonl_rows(f: Any) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for n, text in enumerate(f, start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        obj = loads_json(text, f"manifest: line {n}")
        if not isinstance(obj, dict):
            raise InputError(f"manifest: line {n}: expected a JSON object, got {obj!r}"[:300])
        rows.append((n, obj))
    return rows


def _csv_rows(f: Any, path: Path, delimiter: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    reader = csv.DictReader(f, delimiter=delimiter)
    try:
        if not reader.fieldnames:
            raise InputError(f"manifest: {str(path)!r} has no header row")
        for obj in reader:
            if None in obj:
                raise InputError(
                    f"manifest: line {reader.line_num}: more cells than the header has"
                )
            # An empty cell means "not given", except the prompt (an empty prompt removes).
            cells = {k.strip(): v for k, v in obj.items() if v != "" or k.strip() == "prompt"}
            if any(v.strip() for v in obj.values() if v is not None):
                rows.append((reader.line_num, cells))
    except csv.Error as e:
        raise InputError(f"manifest: line {reader.line_num}: not valid CSV ({e})") from None
    return rows


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, raw row) pairs of a .jsonl / .csv manifest; blank lines and ``#`` lines skipped.
    The text is UTF-8, or whatever its byte order mark names (:func:`_manifest_text`); a JSON row
    nests at most ``blendedit.io.MAX_JSON_DEPTH`` levels."""
    if not path.is_file():
        raise InputError(f"manifest: no such file: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv", ".tsv"):
        raise InputError(
            f"manifest: {str(path)!r} must be .jsonl or .csv (one row per edit), not {suffix!r}"
        )
    f = io.StringIO(_manifest_text(path), newline="")  # lines split as open(newline="") does
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = _jsonl_rows(f)
    else:
        rows = _csv_rows(f, path, "\t" if suffix == ".tsv" else ",")
    if not rows:
        raise InputError(f"manifest: {str(path)!r} has no rows")
    return rows


def _resolve(base: Path, value: Any, key: str, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: {key}: expected a file path, got {value!r}")
    p = Path(os.path.expanduser(value.strip()))
    return p if p.is_absolute() else base / p


def _local_path(value: Any, base: Path | None = None) -> Any:
    """A model given as a local path (relative to ``base``, the manifest's folder, or to the
    working directory) as an absolute path; a hub id as it is."""
    if not isinstance(value, str) or not value.strip():
        return value or None
    p = Path(os.path.expanduser(value))
    for candidate in ([base / p] if base is not None and not p.is_absolute() else []) + [p]:
        if candidate.exists():
            return os.path.abspath(candidate)
    return value


def read_manifest(path: str | os.PathLike[str], shared: Shared | None = None) -> list[Row]:
    """Every row of the manifest, checked: unknown keys, bad types and impossible settings fail
    the whole manifest (one line naming the row); unreadable files make only that row fail."""
    shared = shared or Shared()
    path = Path(path)
    base = path.absolute().parent  # workers may run elsewhere: every path made absolute
    out: list[Row] = []
    seen: dict[str, Row] = {}
    digests: dict[Path, str] = {}
    for index, (line, raw) in enumerate(_read_rows(path), start=1):
        where = f"manifest: row {index} (line {line})"
        row = _row(index, line, where, _given(raw, where), shared, base, digests)
        if row.key in seen:
            raise InputError(
                f"{where}: same folder {row.key!r} as {seen[row.key].name} (the same inputs"
                f"{'' if 'id' not in row.given else ' or id'}); give the rows distinct ids"
            )
        seen[row.key] = row
        out.append(row)
    return out


def _given(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A row's keys by their field names (flag names translated), each once; the inputs there."""
    names, known_settings = aliases(), setting_hints()
    given: dict[str, Any] = {}
    for k, v in raw.items():
        name = names.get(k, k)
        if name not in ROW_KEYS and name not in known_settings and name not in _select_names():
            known = ", ".join((*ROW_KEYS, *SELECT_KEYS, *sorted(known_settings)))
            raise InputError(f"{where}: unknown key {k!r}; known keys: {known}")
        if name in given:
            raise InputError(f"{where}: {name} given twice")
        given[name] = v
    selects = any(given.get(s) for s in SELECT_KEYS[:3])
    for k in INPUT_KEYS:
        if k not in given and not (k == "mask" and selects):
            hint = " (or mask_text, mask_points, mask_box)" if k == "mask" else ""
            raise InputError(f"{where}: missing {k!r}{hint}")
    if not isinstance(given["prompt"], str):
        raise InputError(f"{where}: prompt: expected text, got {given['prompt']!r}")
    return given


def _models(given: dict[str, Any], shared: Shared, base: Path, method: str, where: str) -> dict:
    models = {
        k: _local_path(given[k], base) if given.get(k) else _local_path(getattr(shared, k))
        for k in ("model", "model_config", "clip_model")
    }
    for k, v in models.items():
        if v is not None and not isinstance(v, str):
            raise InputError(f"{where}: {k}: expected text, got {v!r}")
    required = get_method(method).model_required
    if required and not models["model"]:
        raise InputError(f"{where}: model: method {method} needs {required} (model key or --model)")
    return models


def _files(
    given: dict[str, Any], base: Path, where: str, digests: dict[Path, str]
) -> tuple[dict[str, str], str | None]:
    """The row's image and mask as absolute paths, and why they cannot be used (None: fine)."""
    files: dict[str, str] = {}
    problem = None
    for k in ("image", "mask"):
        if k not in given:  # a selection alone
            continue
        p = _resolve(base, given[k], k, where)
        files[k] = str(p)
        if problem is None:
            if not p.is_file():
                problem = f"{k}: no such file: {str(p)!r}"
                continue
            try:
                if p not in digests:  # a file many rows share is hashed once
                    digests[p] = file_digest(p)
            except OSError as e:
                problem = f"{k}: cannot read {str(p)!r} ({e.strerror})"
    return files, problem


def _key(given: dict[str, Any], content: dict[str, str], where: str) -> str:
    """The row's folder name: its id, else a hash of its inputs' contents and what it says."""
    if "id" not in given:
        own = {k: v for k, v in given.items() if k not in ("image", "mask", "id")}
        return json_digest({"inputs": content, "row": own})
    key = str(given["id"]).strip()
    if not _ID.fullmatch(key) or key.lower().startswith("summary."):
        raise InputError(
            f"{where}: id: {given['id']!r} must be 1-100 letters, digits, '.', '_' or "
            "'-' (it names the row's folder), not starting with '.', '_' or '-', not summary.*"
        )
    return key


@functools.lru_cache(maxsize=64)
def _family_base(model: str | None) -> Any:
    """The latent model family's own defaults (SDXL guidance 5, FLUX/Z-Image flow-euler, ...)
    under the manifest's settings, read without loading the model, as ``edit`` and ``eval`` do;
    None (EditConfig's) for the default model or one that cannot be read yet (it fails later,
    in its row)."""
    if not model:
        return None
    from blendedit.config import EditConfig
    from blendedit.errors import BlendEditError
    from blendedit.latent.backbones import family_defaults

    try:
        return EditConfig(**family_defaults(model))
    except BlendEditError:
        return None


def _row(
    index: int,
    line: int,
    where: str,
    given: dict[str, Any],
    shared: Shared,
    base: Path,
    digests: dict[Path, str],
) -> Row:
    method = str(given.get("method") or shared.method)
    if method not in METHODS:
        raise InputError(f"{where}: method: {method!r} is not one of {', '.join(METHODS)}")
    hints = setting_hints()
    row_settings = {k: _coerce(k, v, where) for k, v in given.items() if k in hints}
    models = _models(given, shared, base, method, where)
    try:
        merged = {**shared.settings, **row_settings}
        family = _family_base(models["model"]) if method == "latent" else None
        cfg = get_method(method).settings(merged, shared.preset, base=family, key="method")
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    files, problem = _files(given, base, where, digests)
    content = {k: digests.get(Path(v), f"path:{v}") for k, v in files.items()}
    settings = cfg.to_dict()
    selection = select_of(given, shared, base, where)
    fingerprint = json_digest(
        {
            "inputs": content,
            "prompt": given["prompt"],
            "method": method,
            "models": models,
            "settings": settings,
            "format": [shared.out_format, shared.quality, shared.metadata],
            **({"selection": selection} if selection else {}),  # rows without: as before
        },
        32,
    )
    return Row(
        index=index,
        line=line,
        key=_key(given, content, where),
        fingerprint=fingerprint,
        image=files["image"],
        mask=files.get("mask", ""),
        prompt=given["prompt"],
        method=method,
        model=models["model"],
        model_config=models["model_config"],
        clip_model=models["clip_model"],
        settings=settings,
        given=given,
        problem=problem,
        selection=selection,
    )


def _select_names() -> tuple[str, ...]:
    from blendedit.config import SelectConfig, settings_of

    return (*SELECT_KEYS, *settings_of(SelectConfig))


def _numbers(value: Any, where: str, key: str) -> list[float]:
    if isinstance(value, str):
        value = value.replace(";", ",").split(",")
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(f"{where}: {key}: expected numbers, got {value!r}"[:300]) from None
    return out


def _points(value: Any, where: str) -> list[list[float]]:
    """``mask_points`` as [[x, y, label], ...]: JSON [[x, y], [x, y, 0]] or text "x,y;-x,y"."""
    from blendedit.segment import parse_point

    if isinstance(value, str):
        try:
            pts = [parse_point(p) for p in value.split(";") if p.strip()]
        except InputError as e:
            raise InputError(f"{where}: mask_points: {e}") from None
        return [[p.x, p.y, int(p.positive)] for p in pts]
    if not isinstance(value, list) or not value:
        raise InputError(
            f"{where}: mask_points: expected [[x, y], ...] or 'x,y;x,y', got {value!r}"
        )
    out = []
    for p in value:
        nums = _numbers(p, where, "mask_points")
        if len(nums) not in (2, 3) or (len(nums) == 3 and nums[2] not in (0, 1)):
            raise InputError(f"{where}: mask_points: {p!r} is not [x, y] or [x, y, 0/1]")
        out.append([nums[0], nums[1], int(nums[2]) if len(nums) == 3 else 1])
    return out


def select_of(given: dict[str, Any], shared: Shared, base: Path, where: str) -> dict | None:
    """The row's selection (text, points, box, segmenter, settings) as plain data, or None:
    part of the row's fingerprint, and of its key through the row's own fields."""
    from blendedit.config import SelectConfig, check_settings, settings_of

    text, points, box = (given.get(k) for k in SELECT_KEYS[:3])
    if not (text or points or box):
        return None
    if text is not None and not isinstance(text, str):
        raise InputError(f"{where}: mask_text: expected text, got {text!r}")
    if box is not None:
        box = _numbers(box, where, "mask_box")
        if len(box) != 4:
            raise InputError(f"{where}: mask_box: expected x0,y0,x1,y1, got {given['mask_box']!r}")
        box = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
    names = settings_of(SelectConfig)
    try:
        cfg = {k: _coerce_select(k, v) for k, v in given.items() if k in names}
        config = check_settings(SelectConfig(**cfg))
    except (InputError, TypeError, ValueError) as e:
        raise InputError(f"{where}: {e}") from None
    segmenter = given.get("segmenter") or shared.segmenter
    return {
        "text": text or None,
        "points": _points(points, where) if points else [],
        "box": box,
        "segmenter": _local_path(segmenter, base) if segmenter else None,
        "config": dataclasses.asdict(config),
    }


def _coerce_select(name: str, value: Any) -> Any:
    """A selection setting written as text (CSV) as its type."""
    if not isinstance(value, str):
        return value
    if name in ("mask_fill_holes", "mask_largest"):
        return value.strip().lower() in ("1", "true", "yes")
    if name == "select_threshold":
        return float(value)
    if name == "select_preview":
        return int(value)
    return value
