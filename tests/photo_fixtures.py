"""Test fixtures for real-photo handling: a Display P3 ICC profile built in code."""

from __future__ import annotations

import struct

import numpy as np

_D50 = (0.9642, 1.0, 0.8249)
_BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _p3_columns_d50() -> np.ndarray:
    """(3, 3): columns are the XYZ of P3 red, green, blue, Bradford-adapted from D65 to D50."""
    prim = np.array([[0.680, 0.320], [0.265, 0.690], [0.150, 0.060]])  # (3, 2) xy
    xyz = np.stack([prim[:, 0] / prim[:, 1], np.ones(3), (1 - prim.sum(1)) / prim[:, 1]])  # (3, 3)
    white = np.array([0.95047, 1.0, 1.08883])  # D65
    rgb_to_xyz = xyz * np.linalg.solve(xyz, white)  # columns scaled so that (1, 1, 1) -> white
    cone = _BRADFORD @ white, _BRADFORD @ np.array(_D50)
    adapt = np.linalg.inv(_BRADFORD) @ np.diag(cone[1] / cone[0]) @ _BRADFORD
    return adapt @ rgb_to_xyz


def _srgb_curve(n: int = 1024) -> bytes:
    """curveType: the sRGB transfer function as an n-entry table."""
    v = np.linspace(0, 1, n)
    lin = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    table = np.round(lin * 65535).astype(">u2").tobytes()
    return b"curv\0\0\0\0" + struct.pack(">I", n) + table


def _desc(text: str) -> bytes:
    """textDescriptionType (ICC v2)."""
    ascii_ = text.encode("ascii") + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * (4 + 4 + 2 + 1 + 67)


def display_p3_icc() -> bytes:
    """A valid ICC v2 matrix/TRC "Display P3" profile (D50 PCS, sRGB transfer curves)."""
    cols = _p3_columns_d50()
    curve = _srgb_curve()
    tags = [
        (b"desc", _desc("Display P3 (blendedit test)")),
        (b"cprt", b"text\0\0\0\0" + b"No copyright, test data\0"),
        (b"wtpt", _xyz(*_D50)),
        (b"rXYZ", _xyz(*cols[:, 0])),
        (b"gXYZ", _xyz(*cols[:, 1])),
        (b"bXYZ", _xyz(*cols[:, 2])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data, placed = [], b"", {}
    for sig, blob in tags:
        if blob not in placed:  # the three TRCs share one copy
            placed[blob] = offset + len(data)
            data += blob + b"\0" * (-len(blob) % 4)
        table.append(struct.pack(">4sII", sig, placed[blob], len(blob)))
    body = struct.pack(">I", len(tags)) + b"".join(table) + data
    size = 128 + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acspAPPL"
        + b"\0" * 4  # flags
        + b"\0" * 8  # manufacturer, model
        + b"\0" * 8  # attributes
        + b"\0" * 4  # rendering intent: perceptual
        + b"".join(_s15(v) for v in _D50)
        + b"\0" * 4  # creator
        + b"\0" * 16  # profile ID (none in v2)
        + b"\0" * 28
    )
    assert len(header) == 128
    return header + body
