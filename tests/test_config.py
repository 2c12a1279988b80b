"""Tests for blendedit.config: defaults, validation messages, replace, presets, seeds, to_dict."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch

from blendedit.config import PRESETS, EditConfig, preset, resolve_seeds
from blendedit.errors import InputError


def _one_line(err: pytest.ExceptionInfo[BaseException], *parts: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


def test_defaults() -> None:
    c = EditConfig()
    assert c.num_images == 8
    assert c.num_inference_steps == 50
    assert c.guidance_scale == 7.5
    assert c.blend_start == 0.25
    assert c.scheduler == "ddim"
    assert c.rank is True
    assert c.background == "stitch"
    assert c.eta == 0.0 and c.invert_mask is False and c.seed == 0
    assert c.shrink_kernels == (7, 5, 3) and c.mask_shrink == "auto"
    assert c.validate() is c


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EditConfig().num_images = 2  # type: ignore[misc]


BAD: list[tuple[str, Any]] = [
    ("num_images", 0),
    ("num_images", 1025),
    ("num_inference_steps", 0),
    ("num_inference_steps", 1001),
    ("blend_start", -0.1),
    ("blend_start", 1.0),
    ("guidance_scale", -1.0),
    ("guidance_scale", 100.5),
    ("size", 32),
    ("size", 5000),
    ("mask_shrink", "sometimes"),
    ("shrink_kernels", (7, 4, 3)),
    ("shrink_kernels", (0,)),
    ("background", "blurred"),
    ("feather", -1),
    ("feather", 17),
    ("batch_size", 0),
    ("decode_batch_size", 0),
    ("seed", -1),
    ("seed", 2**63),
    ("eta", -0.5),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v}" for f, v in BAD])
def test_validate_rejects(field: str, value: Any) -> None:
    cfg = EditConfig().replace(**{field: value})
    with pytest.raises(InputError) as e:
        cfg.validate()
    msg = _one_line(e, repr(value))
    assert msg.startswith(f"{field}:"), msg


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_images", 1),
        ("num_images", 1024),
        ("num_inference_steps", 1),
        ("blend_start", 0.0),
        ("blend_start", 0.99),
        ("guidance_scale", 0.0),
        ("size", 64),
        ("size", 4096),
        ("size", None),
        ("mask_shrink", "on"),
        ("shrink_kernels", (1,)),
        ("background", "decoded"),
        ("feather", 0),
        ("feather", 16),
        ("seed", 2**63 - 1),
        ("eta", 1.0),
    ],
)
def test_validate_accepts_edges(field: str, value: Any) -> None:
    EditConfig().replace(**{field: value}).validate()


def test_validate_rejects_unknown_scheduler() -> None:
    with pytest.raises(InputError) as e:
        EditConfig(scheduler="heun").validate()
    _one_line(e, "scheduler", "'heun'")


def test_replace() -> None:
    c = EditConfig()
    d = c.replace(num_images=3, rank=False)
    assert d.num_images == 3 and d.rank is False
    assert c.num_images == 8 and c.rank is True  # original unchanged
    assert d.replace() == d


def test_replace_rejects_unknown_names() -> None:
    with pytest.raises(InputError) as e:
        EditConfig().replace(num_imgs=3, steps=10, seed=1)
    msg = _one_line(e, "config", "num_imgs", "steps")
    assert "seed" not in msg.split("setting(s)")[-1]


def test_presets_exist_and_validate() -> None:
    assert {"default", "paper", "fast", "draft"} <= set(PRESETS)
    for name, cfg in PRESETS.items():
        assert preset(name) is cfg
        assert cfg.validate() is cfg
    assert preset("default") == EditConfig()
    assert preset("paper").num_images == 24


def test_presets_use_known_schedulers() -> None:
    from blendedit.models import SCHEDULERS

    assert all(cfg.scheduler in SCHEDULERS for cfg in PRESETS.values())


def test_unknown_preset() -> None:
    with pytest.raises(InputError) as e:
        preset("turbo")
    _one_line(e, "preset", "'turbo'", "default", "paper")


# ------------------------------------------------------------------ resolve_seeds


def test_resolve_seeds_explicit() -> None:
    assert resolve_seeds(2, 100, [5, 7], None) == [5, 7]  # explicit seeds win
    assert resolve_seeds(1, None, (3,), torch.Generator()) == [3]


@pytest.mark.parametrize("seeds", [[], [-1], [1, 2**63]])
def test_resolve_seeds_explicit_bad(seeds: list[int]) -> None:
    with pytest.raises(InputError) as e:
        resolve_seeds(2, None, seeds, None)
    _one_line(e, "seeds", repr(seeds))


def test_resolve_seeds_from_seed() -> None:
    assert resolve_seeds(4, 10, None, None) == [10, 11, 12, 13]
    assert resolve_seeds(1, 0, None, None) == [0]


def test_resolve_seeds_from_generator_deterministic() -> None:
    a = resolve_seeds(3, None, None, torch.Generator().manual_seed(42))
    b = resolve_seeds(3, None, None, torch.Generator().manual_seed(42))
    c = resolve_seeds(3, None, None, torch.Generator().manual_seed(43))
    assert a == b and a != c
    assert a == [a[0], a[0] + 1, a[0] + 2]
    assert 0 <= a[0] < 2**62


def test_resolve_seeds_none() -> None:
    with pytest.raises(InputError) as e:
        resolve_seeds(3, None, None, None)
    _one_line(e, "seed", "generator")


# ------------------------------------------------------------------ to_dict


def test_to_dict_json_serialisable() -> None:
    for cfg in [*PRESETS.values(), EditConfig(size=512, negative_prompt="blurry")]:
        d = cfg.to_dict()
        assert d["shrink_kernels"] == list(cfg.shrink_kernels)
        back = json.loads(json.dumps(d))
        assert back == d
        back["shrink_kernels"] = tuple(back["shrink_kernels"])
        assert EditConfig(**back) == cfg
