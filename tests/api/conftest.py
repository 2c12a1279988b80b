"""The API tests' fixtures: the photo, OpenAI's kind of mask, and the server over the tiny
editor (tests/conftest.py's ``editor``) with a key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from api_fixtures import HOLE, KEY, SIDE, running
from PIL import Image

from blendedit.api.backend import LocalBackend
from blendedit.api.settings import ApiOptions


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def mask() -> Image.Image:
    """OpenAI's convention: opaque everywhere but the (fully transparent) region to edit."""
    a = np.full((SIDE, SIDE, 4), 255, np.uint8)
    x0, y0, x1, y1 = HOLE
    a[y0:y1, x0:x1, 3] = 0
    return Image.fromarray(a, "RGBA")


@pytest.fixture(scope="module")
def api_options() -> ApiOptions:
    return ApiOptions(max_upload_mb=1, max_n=4, max_queue=4, per_key=4, api_keys=(KEY,)).check()


@pytest.fixture(scope="module")
def backend(editor: Any, api_options: ApiOptions) -> Iterator[LocalBackend]:
    b = LocalBackend(editor, api_options, "tiny-sd")
    yield b
    b.close()


@pytest.fixture(scope="module")
def server(backend: LocalBackend, api_options: ApiOptions) -> Iterator[str]:
    with running(backend, api_options) as url:
        yield url
