"""Each setting described once (``blendedit.config``) and every front end generated from that:
the ``edit`` parser, the batch manifest's keys, ``eval``'s per-method flags, the web editor's
controls and the checks of ``validate``."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from blendedit import methods
from blendedit.config import EditConfig, PixelConfig, setting
from blendedit.errors import InputError


@dataclasses.dataclass(frozen=True)
class SharperConfig(EditConfig):
    """EditConfig with one more setting, declared as every setting is."""

    sharpen: float = setting(
        0.5, "unsharp amount after decoding", flag="--sharpen", low=0, high=2, eval=True,
        web=True, label="Sharpen", step=0.1,
    )  # fmt: skip


@pytest.fixture
def sharper():
    """The latent method configured by SharperConfig while the test runs."""
    before = methods.METHODS["latent"]
    methods.register_method(dataclasses.replace(before, config=SharperConfig))
    yield SharperConfig
    methods.register_method(before)


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {f: a for a in parser._actions for f in a.option_strings}


def _subparser(name: str) -> argparse.ArgumentParser:
    from blendedit.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices[name]


def test_a_new_setting_reaches_every_front_end(sharper):
    edit = _subparser("edit")
    assert "--sharpen" in edit.format_help()
    action = _flags(edit)["--sharpen"]
    assert action.dest == "sharpen" and "unsharp amount" in action.help
    args = edit.parse_args(["p.png", "--mask", "m.png", "--prompt", "x", "--sharpen", "1.5"])
    from blendedit.cli import config_from_args

    cfg = config_from_args(args)
    assert isinstance(cfg, SharperConfig) and cfg.sharpen == 1.5
    with pytest.raises(InputError, match=r"^sharpen: 3.0 must be between 0 and 2$"):
        config_from_args(edit.parse_args(["p", "--mask", "m", "--prompt", "x", "--sharpen", "3"]))

    from blendedit.batch.manifest import setting_hints

    assert "sharpen" in setting_hints()

    eval_flags = _flags(_subparser("eval"))
    assert eval_flags["--sharpen"].dest == "sharpen"
    from blendedit.eval.cli import eval_settings

    assert "sharpen" in eval_settings()

    from blendedit.web.settings import control_specs, settings_from_ui

    sharpen = next(c for c in control_specs("latent") if c.name == "sharpen")
    assert (sharpen.kind, sharpen.label, sharpen.default) == ("slider", "Sharpen", 0.5)
    assert (sharpen.minimum, sharpen.maximum, sharpen.step) == (0, 2, 0.1)
    ui = {"num_images": 2, "steps": 10, "guidance": 5, "blend_start": 0.25, "feather": 8,
          "batch_size": 1, "sharpen": 1.25}  # fmt: skip
    _, cfg = settings_from_ui("latent", ui, max_results=4, base=SharperConfig())
    assert cfg.sharpen == 1.25


def test_a_manifest_row_takes_the_new_setting(sharper, tmp_path):
    from blendedit.batch.manifest import read_manifest

    (tmp_path / "m.jsonl").write_text(
        '{"image": "a.png", "mask": "b.png", "prompt": "x", "sharpen": 0.25}\n'
        '{"image": "a.png", "mask": "b.png", "prompt": "y", "sharpen": 7}\n'
    )
    with pytest.raises(InputError, match=r"row 2 .*sharpen: 7.0 must be between 0 and 2"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text(
        '{"image": "a.png", "mask": "b.png", "prompt": "x", "sharpen": 0.25}\n'
    )
    (row,) = read_manifest(tmp_path / "m.jsonl")
    assert row.settings["sharpen"] == 0.25 and row.config().sharpen == 0.25


def test_flags_of_one_method_are_refused_for_another():
    edit = _subparser("edit")
    args = edit.parse_args(["p", "--mask", "m", "--prompt", "x", "--respacing", "50"])
    from blendedit.cli import config_from_args

    with pytest.raises(InputError, match="timestep_respacing: applies to --method pixel"):
        config_from_args(args)
    args = edit.parse_args(["p", "--mask", "m", "--prompt", "x", "--method", "pixel"])
    args.model = None
    assert config_from_args(args).local is False
    args.method = "local-clip"
    assert config_from_args(args).local is True


@pytest.mark.parametrize(
    ("cls", "field", "value", "why"),
    [
        (EditConfig, "eta", math.nan, "must be a finite number"),
        (EditConfig, "recon_lambda", math.inf, "must be a finite number"),
        (EditConfig, "guidance_scale", 101.0, "must be between 0 and 100"),
        (EditConfig, "scheduler", "nope", "is unknown; choose one of ddim"),
        (EditConfig, "batch_size", 0, "must be at least 1"),
        (EditConfig, "recon_lr", 0.0, "must be in (0, 10]"),
        (PixelConfig, "range_lambda", -1.0, "must be a finite number >= 0"),
        (PixelConfig, "fit", "crop", "must be one of stretch, pad"),
        (PixelConfig, "class_label", -2, "must be -1 (a random class"),
    ],
)
def test_validate_checks_every_described_range(cls, field, value, why):
    with pytest.raises(InputError, match=f"^{field}: .*{why[:20]}".replace("(", r"\(")):
        cls(**{field: value}).validate()


def test_every_setting_with_a_flag_has_help_and_one_flag():
    from blendedit.options import setting_fields

    seen: dict[str, str] = {}
    for name, (s, _, _) in setting_fields().items():
        assert s.help.strip(), name
        for flag in (s.flag, *(f for f, _, _ in s.also)):
            if flag is not None:
                assert flag not in seen, (flag, name, seen.get(flag))
                seen[flag] = name
