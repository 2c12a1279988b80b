"""Fuzzing what a careless or hostile user hands blendedit (issue 25): the photo and mask readers,
the manifest reader, the trail reader and the settings (the library's and the command line's).
Whatever comes in, the answer is a result or one line (``BlendEditError``; argparse's exit 2 for
the command line), never a traceback, and a refusal leaves nothing behind.

Floats are drawn without subnormals: the tests flush them (``tests/conftest.py``), and
hypothesis refuses to draw them then. Bounded and deterministic (``derandomize``, no example database), so the default suite stays
quick and repeatable; raise ``FUZZ_EXAMPLES`` to search longer.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_fixtures import photo, trail

from blendedit.batch import read_manifest, run_batch
from blendedit.batch.manifest import ROW_KEYS, Shared, aliases, setting_hints
from blendedit.cli import main
from blendedit.config import EditConfig, PixelConfig, settings_of
from blendedit.errors import BlendEditError, ModelNotFoundError
from blendedit.frame.edit import read_mask
from blendedit.frame.photo import read_photo
from blendedit.io import load_image, open_image
from blendedit.web.session import parse_trail

N = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=N,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_names = itertools.count()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fresh(work: Path, suffix: str = "") -> Path:
    return work / f"f{next(_names)}{suffix}"


def _one_line(e: BaseException) -> None:
    assert isinstance(e, BlendEditError), f"{type(e).__name__}: {e}"
    text = str(e)
    assert text and "\n" not in text, repr(text)


def _refused_or_fine(call: Any) -> Any:
    """``call()``'s value, or None when it raised one line; anything else fails the test."""
    try:
        return call()
    except BlendEditError as e:
        _one_line(e)
        return None


# -- JSON-like values -----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


# -- the photo and mask readers -------------------------------------------------------------------


def _seed_files() -> dict[str, bytes]:
    """Small real files of each format the readers meet, to truncate and mutate."""
    out = {}
    im = photo(48, 32)
    for fmt, kw in (
        ("PNG", {}),
        ("JPEG", {"quality": 80}),
        ("GIF", {}),
        ("TIFF", {}),
        ("WEBP", {"quality": 80}),
        ("BMP", {}),
    ):
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        out[fmt] = buf.getvalue()
    buf = io.BytesIO()
    im.convert("RGBA").save(buf, format="PNG")
    out["RGBA"] = buf.getvalue()
    return out


SEEDS = _seed_files()


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "mutated", "png-size"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    if kind == "truncated":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, min(len(data), 400) - 1))  # mostly the header
            data[at] = draw(st.integers(0, 255))
        return bytes(data)
    # A PNG whose header claims another size (up to 2**31 a side), with its CRC fixed.
    png = bytearray(SEEDS["PNG"])
    w, h = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))
    png[16:24] = struct.pack(">II", w, h)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


@FUZZ
@given(data=image_bytes(), suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".bin"]))
def test_fuzz_the_photo_and_mask_readers(work, data, suffix):
    path = _fresh(work, suffix)
    path.write_bytes(data)
    shown = read_photo(photo(48, 32))
    p = _refused_or_fine(lambda: read_photo(path, "image"))
    if p is not None:
        assert p.pixels.ndim == 3 and p.pixels.shape[:2] == (p.size[1], p.size[0])
    _refused_or_fine(lambda: load_image(path, "image"))
    _refused_or_fine(lambda: open_image(path, "mask"))
    _refused_or_fine(lambda: read_mask(path, shown))


# -- the manifest reader --------------------------------------------------------------------------

KEYS = sorted({*ROW_KEYS, *setting_hints(), *aliases()})


@st.composite
def manifest_rows(draw: st.DrawFn) -> str:
    rows = draw(
        st.lists(
            st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_values, max_size=6),
            min_size=1,
            max_size=3,
        )
    )
    lines = []
    for r in rows:
        if draw(st.booleans()):  # most rows name the three inputs
            r = {"image": "a.png", "mask": "b.png", "prompt": "x", **r}
        lines.append(json.dumps(r))  # NaN and Infinity as JSON readers allow them
    return "\n".join(lines) + "\n"


def _csv_text(draw: st.DrawFn) -> str:
    header = draw(st.lists(st.sampled_from(KEYS) | st.text(max_size=5), min_size=1, max_size=5))
    cells = st.text(max_size=8) | st.sampled_from(["nan", "inf", "-1", "1e400", "none", "true"])
    rows = draw(st.lists(st.lists(cells, max_size=6), max_size=3))
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


@st.composite
def manifest_files(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["rows", "csv", "text", "bytes", "utf-16"]))
    if kind == "rows":
        return ".jsonl", draw(manifest_rows()).encode()
    if kind == "csv":
        return ".csv", _csv_text(draw).encode()
    if kind == "text":
        return draw(st.sampled_from([".jsonl", ".csv"])), draw(st.text(max_size=200)).encode()
    if kind == "bytes":
        return draw(st.sampled_from([".jsonl", ".csv"])), draw(st.binary(max_size=200))
    return ".jsonl", b"\xff\xfe" + draw(manifest_rows()).encode("utf-16-le")


@FUZZ
@given(file=manifest_files())
def test_fuzz_the_manifest_reader(work, file):
    suffix, data = file
    folder = _fresh(work)
    folder.mkdir()
    path = folder / f"edits{suffix}"
    path.write_bytes(data)
    _refused_or_fine(lambda: read_manifest(path))
    out = folder / "out"
    refuse = mock.patch("blendedit.methods.load_editor", side_effect=AssertionError("loaded"))
    with refuse:  # no row names a real photo: no model may load
        summary = _refused_or_fine(lambda: run_batch(path, out, shared=Shared(), progress=False))
    if summary is None:
        assert not out.exists()  # a refused manifest leaves nothing behind
    else:
        assert summary["done"] == 0 and summary["pending"] == 0


# -- the trail reader -----------------------------------------------------------------------------

BASE_TRAIL = trail()


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value (a key of a dict or an index of a list)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


TRAIL_PATHS = [p for p in _paths(BASE_TRAIL) if p]


@st.composite
def trails(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 4)) == 0:
        return draw(json_values)  # anything at all
    data = json.loads(json.dumps(BASE_TRAIL))
    for _ in range(draw(st.integers(1, 3))):  # replace or remove a few fields of a real trail
        where = draw(st.sampled_from(TRAIL_PATHS))
        parent = data
        try:
            for k in where[:-1]:
                parent = parent[k]
            if draw(st.integers(0, 5)) == 0 and isinstance(parent, dict):
                parent.pop(where[-1], None)
            else:
                parent[where[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed that place
    return data


@FUZZ
@given(data=trails())
def test_fuzz_the_trail_reader(work, data):
    if isinstance(data, dict):
        _refused_or_fine(lambda: parse_trail(data))
    path = _fresh(work, ".json")
    path.write_text(json.dumps(data))
    _refused_or_fine(lambda: parse_trail(path))


# -- the settings ---------------------------------------------------------------------------------

FIELDS = {cls: sorted(settings_of(cls)) for cls in (EditConfig, PixelConfig)}
setting_values = (
    json_values
    | st.sampled_from([math.nan, math.inf, -math.inf, 2**63, -(2**63), 1e308, -0.0])
    | st.builds(np.float32, st.floats(width=32, allow_subnormal=False))
    | st.builds(np.int64, st.integers(-(2**63), 2**63 - 1))
    | st.tuples(st.integers(-3, 9), st.integers(-3, 9))
)


@settings(FUZZ, max_examples=5 * N)  # microseconds an example: search five times as long
@given(
    cls=st.sampled_from([EditConfig, PixelConfig]),
    data=st.data(),
)
def test_fuzz_the_settings(cls, data):
    changes = data.draw(
        st.dictionaries(st.sampled_from(FIELDS[cls]), setting_values, min_size=1, max_size=3)
    )
    cfg = _refused_or_fine(lambda: cls().replace(**changes).validate())
    if cfg is not None:  # what validate accepts is what the edit can use
        for name, value in cfg.to_dict().items():
            if isinstance(value, float | np.floating):
                assert math.isfinite(value), name


def _flag_values() -> st.SearchStrategy[str]:
    numbers = st.integers(-(2**70), 2**70).map(str) | st.floats(allow_subnormal=False).map(repr)
    words = st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "", " ", "7,5,3", "ddim"])
    return numbers | words | st.text(max_size=10)


EDIT_FLAGS = sorted(
    {
        s.flag
        for cls in (EditConfig, PixelConfig)
        for s, _, _ in settings_of(cls).values()
        if s.flag and s.takes_value
    }
    | {"--quality", "--preset", "--format", "--save-process"}
)


@FUZZ
@given(
    flags=st.lists(st.tuples(st.sampled_from(EDIT_FLAGS), _flag_values()), min_size=1, max_size=4)
)
def test_fuzz_the_command_line(work, shared_images, flags):
    out = _fresh(work)
    argv = [
        "edit", str(shared_images / "chelsea.png"), "--mask",
        str(shared_images / "chelsea.mask-eyes.png"), "--prompt", "x", "--out", str(out),
        "--device", "cpu", "--quiet",
    ]  # fmt: skip
    for flag, value in flags:
        argv.append(f"{flag}={value}")  # "=": a value may start with "-"
    not_loaded = ModelNotFoundError("model: not loaded in the fuzz test")
    err = io.StringIO()
    with (
        mock.patch("blendedit.options.ModelOptions.load", side_effect=not_loaded),
        contextlib.redirect_stderr(err),
    ):
        try:
            status = main(argv)
        except SystemExit as e:  # argparse: a value of the wrong kind or choice
            status = e.code
    assert status == 2, err.getvalue()
    lines = err.getvalue().strip().splitlines()
    assert "Traceback" not in err.getvalue()
    assert lines[-1].startswith(("blendedit: error: ", "blendedit edit: error: ")), lines
    if lines[-1].startswith("blendedit: error: "):
        assert len(lines) == 1, lines  # our refusals are one line (argparse adds its usage)
    assert not out.exists()
