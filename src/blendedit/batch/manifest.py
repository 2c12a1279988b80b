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

import csv
import dataclasses
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blendedit.config import EditConfig, FrameConfig
from blendedit.errors import InputError
from blendedit.io import json_digest
from blendedit.pixel.pipeline import PixelConfig

METHODS = ("latent", "pixel", "local-clip")
# Keys that are not edit settings: the inputs, the row's name and what loads the model.
INPUT_KEYS = ("image", "mask", "prompt")
MODEL_KEYS = ("method", "model", "model_config", "clip_model")
ROW_KEYS = (*INPUT_KEYS, "id", *MODEL_KEYS)
# ``blendedit edit`` flag names (dashes as underscores) of settings whose field is named otherwise.
ALIASES = {
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "respacing": "timestep_respacing",
    "clip_guidance": "clip_guidance_lambda",
    "lpips_lambda": "lpips_sim_lambda",
    "l2_lambda": "l2_sim_lambda",
}
LATENT_FIELDS = {f.name: f for f in dataclasses.fields(EditConfig)}
PIXEL_FIELDS = {f.name: f for f in dataclasses.fields(PixelConfig)}
SETTING_FIELDS = {**LATENT_FIELDS, **PIXEL_FIELDS}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_HINTS: dict[str, Any] = {
    **typing.get_type_hints(EditConfig),
    **typing.get_type_hints(PixelConfig),
}


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        return cls(**d)

    def config(self) -> EditConfig | PixelConfig:
        cls = EditConfig if self.method == "latent" else PixelConfig
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


def _coerce(name: str, value: Any, where: str) -> Any:
    """A manifest value (CSV: always text) as the type of setting ``name``."""
    hint = _HINTS[name]
    args = {hint} if typing.get_origin(hint) is tuple else set(typing.get_args(hint)) or {hint}
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if type(None) in args:
            return None
        raise InputError(f"{where}: {name}: None is not allowed")
    kinds = args - {type(None)}
    try:
        if bool in kinds:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes"):
                return True
            if text in ("0", "false", "no"):
                return False
            raise ValueError
        if int in kinds:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if float in kinds:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if any(typing.get_origin(k) is tuple for k in kinds):
            items = value if isinstance(value, list) else str(value).replace(",", " ").split()
            return tuple(int(v) for v in items)
        if str in kinds:
            if not isinstance(value, str | int):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    raise InputError(f"{where}: {name}: {value!r} is not a valid {hint}")


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, raw row) pairs of a .jsonl / .csv manifest; blank lines and ``#`` lines skipped."""
    if not path.is_file():
        raise InputError(f"manifest: no such file: {str(path)!r}")
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict[str, Any]]] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        if suffix in (".jsonl", ".ndjson", ".json"):
            for n, text in enumerate(f, start=1):
                if not text.strip() or text.lstrip().startswith("#"):
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise InputError(f"manifest: line {n}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise InputError(f"manifest: line {n}: expected a JSON object, got {obj!r}")
                rows.append((n, obj))
        elif suffix in (".csv", ".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
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
        else:
            raise InputError(
                f"manifest: {str(path)!r} must be .jsonl or .csv (one row per edit), not {suffix!r}"
            )
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


def _config(method: str, shared: Shared, row_settings: dict[str, Any]) -> FrameConfig:
    from blendedit.config import preset
    from blendedit.pixel.pipeline import pixel_preset

    fields = LATENT_FIELDS if method == "latent" else PIXEL_FIELDS
    merged = {**shared.settings, **row_settings}
    for name in merged:
        if name not in fields:
            other = "latent" if name in LATENT_FIELDS else "pixel and local-clip"
            raise InputError(f"{name}: applies to method {other} only, not {method}")
    if method == "latent":
        return preset(shared.preset).replace(**merged).validate()
    base = pixel_preset(shared.preset).replace(**merged)
    return base.replace(local=method == "local-clip").validate()


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
        given: dict[str, Any] = {}
        for k, v in raw.items():
            name = ALIASES.get(k, k)
            if name not in ROW_KEYS and name not in SETTING_FIELDS:
                known = ", ".join((*ROW_KEYS, *sorted(SETTING_FIELDS)))
                raise InputError(f"{where}: unknown key {k!r}; known keys: {known}")
            if name in given:
                raise InputError(f"{where}: {name} given twice")
            given[name] = v
        for k in INPUT_KEYS:
            if k not in given:
                raise InputError(f"{where}: missing {k!r}")
        prompt = given["prompt"]
        if not isinstance(prompt, str):
            raise InputError(f"{where}: prompt: expected text, got {prompt!r}")
        method = str(given.get("method") or shared.method)
        if method not in METHODS:
            raise InputError(f"{where}: method: {method!r} is not one of {', '.join(METHODS)}")
        row_settings = {k: _coerce(k, v, where) for k, v in given.items() if k in SETTING_FIELDS}
        try:
            cfg = _config(method, shared, row_settings)
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        models = {
            k: _local_path(given[k], base) if given.get(k) else _local_path(getattr(shared, k))
            for k in ("model", "model_config", "clip_model")
        }
        for k, v in models.items():
            if v is not None and not isinstance(v, str):
                raise InputError(f"{where}: {k}: expected text, got {v!r}")
        if method != "latent" and not models["model"]:
            raise InputError(
                f"{where}: model: method {method} needs the ADM checkpoint file (model key or --model)"
            )
        files: dict[str, str] = {}
        problem = None
        for k in ("image", "mask"):
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
        content = {k: digests.get(Path(v), f"path:{v}") for k, v in files.items()}
        own = {k: v for k, v in given.items() if k not in ("image", "mask", "id")}
        if "id" in given:
            key = str(given["id"]).strip()
            if not _ID.fullmatch(key) or key.lower().startswith("summary."):
                raise InputError(
                    f"{where}: id: {given['id']!r} must be 1-100 letters, digits, '.', '_' or "
                    "'-' (it names the row's folder), not starting with '.', '_' or '-', not summary.*"
                )
        else:
            key = json_digest({"inputs": content, "row": own})
        settings = cfg.to_dict()
        fingerprint = json_digest(
            {
                "inputs": content,
                "prompt": prompt,
                "method": method,
                "models": models,
                "settings": settings,
                "format": [shared.out_format, shared.quality, shared.metadata],
            },
            32,
        )
        row = Row(
            index=index,
            line=line,
            key=key,
            fingerprint=fingerprint,
            image=files["image"],
            mask=files["mask"],
            prompt=prompt,
            method=method,
            model=models["model"],
            model_config=models["model_config"],
            clip_model=models["clip_model"],
            settings=settings,
            given=given,
            problem=problem,
        )
        if key in seen:
            first = seen[key]
            raise InputError(
                f"{where}: same folder {key!r} as {first.name} (the same inputs"
                f"{'' if 'id' not in given else ' or id'}); give the rows distinct ids"
            )
        seen[key] = row
        out.append(row)
    return out
