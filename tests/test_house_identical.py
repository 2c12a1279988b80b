"""Bit-identical results across the restructuring: every case of ``house_cases.py`` (SD, SDXL, SD3,
FLUX, LDM and the pixel method on tiny random models) must give exactly the candidate images and
final latents, and to 1e-6 the scores, recorded from the code before it (``data/reference/house/
record.py``, run on a checkout of the commit before the restructuring began).

Public API only (through house_cases), so blendedit's internal modules may move. A failure here
means results changed: fix the code, or, for a deliberate change (or new torch/diffusers versions,
see house.json's meta), re-record with record.py and say so in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import house_cases as H

pytestmark = pytest.mark.skipif(
    not (H.HOUSE / H.RESULTS_FILE).is_file(), reason=f"no recorded fixture in {H.HOUSE}"
)


@pytest.fixture(scope="module")
def recorded() -> tuple[dict, dict[str, np.ndarray]]:
    results = json.loads((H.HOUSE / H.RESULTS_FILE).read_text())
    with np.load(H.HOUSE / H.IMAGES_FILE) as npz:
        images = {k: npz[k] for k in npz.files}
    return results, images


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> H.Models:
    H.setup_torch()  # as conftest.py: one thread, subnormals flushed (the recording's settings)
    return H.Models(Path(tmp_path_factory.mktemp("house-models")))


def test_recorded_cases_are_the_cases(recorded) -> None:
    results, images = recorded
    assert list(results["cases"]) == list(H.CASES)
    expected = {
        H.array_key(n, i) for n, c in results["cases"].items() for i in range(len(c["seeds"]))
    }
    assert set(images) == expected


@pytest.mark.parametrize("name", list(H.CASES))
def test_identical_to_recorded(name: str, models: H.Models, recorded) -> None:
    results, images = recorded
    if name not in results["cases"]:
        pytest.fail(f"{name}: not in the recorded fixture (record.py records every case)")
    want = results["cases"][name]
    got = H.run_case(name, models)
    hint = f"recorded with {results['meta']['versions']}"
    assert got.seeds == want["seeds"], f"{name}: candidate order/seeds changed; {hint}"
    assert len(got.scores) == len(want["scores"]) == len(want["latents"])
    for i, (s, w) in enumerate(zip(got.scores, want["scores"], strict=True)):
        if w is None or s is None:
            assert s is w, f"{name}[{i}]: score {s!r}, recorded {w!r}"
        else:
            assert abs(s - w) <= H.SCORE_TOL, f"{name}[{i}]: score {s!r}, recorded {w!r}; {hint}"
    for i, im in enumerate(got.images):
        ref = images[H.array_key(name, i)]
        assert im.dtype == ref.dtype and im.shape == ref.shape, (
            f"{name}[{i}]: image {im.dtype} {im.shape}, recorded {ref.dtype} {ref.shape}"
        )
        if not np.array_equal(im, ref):
            diff = np.abs(im.astype(np.int16) - ref.astype(np.int16))
            changed, pixels = int((diff > 0).any(-1).sum()), diff.shape[0] * diff.shape[1]
            pytest.fail(
                f"{name}[{i}] (seed {got.seeds[i]}): {changed} of {pixels} pixels differ, "
                f"max |diff| {int(diff.max())}; {hint}"
            )
    for i, (z, want_z) in enumerate(zip(got.latents, want["latents"], strict=True)):
        got_z = H.latent_digest(z)
        assert got_z == want_z, (
            f"{name}[{i}] (seed {got.seeds[i]}): final latent not bit-identical (the images "
            f"match: the arithmetic changed below their uint8 resolution): {got_z} != {want_z}"
        )
