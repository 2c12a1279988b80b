"""The evaluation end to end with tiny random-weight models on the shared photos: the CLI, the
library, determinism, resuming after a kill, skipped methods and refused stale caches."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from blendedit.cli import main
from blendedit.config import EditConfig
from blendedit.errors import InputError
from blendedit.eval import EvalModels, EvalSettings, run_eval, without_timings
from blendedit.eval import runner as eval_runner
from blendedit.eval.methods import DEFAULT_METHODS, Resources
from blendedit.pixel.pipeline import PixelConfig
from tiny_eval_models import lpips_weight_files, tiny_resnet_classifier

N_IMAGES, BATCH, MAX_SIDE = 3, 2, 128


@pytest.fixture(scope="module")
def adm_reference():
    # this file's own path: another folder's conftest may be the module named "conftest"
    ref = Path(__file__).resolve().parent / "data" / "reference" / "adm"
    if not (ref / "tiny_adm.safetensors").is_file():
        pytest.skip(f"ADM reference model not found at {ref}")
    return ref


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory, tiny_sd_dir, tiny_clip_dir, adm_reference) -> EvalModels:
    root = tmp_path_factory.mktemp("eval-models")
    trunk, lin = lpips_weight_files(root / "lpips")
    return EvalModels(
        sd_model=str(tiny_sd_dir),
        pixel_model=str(adm_reference / "tiny_adm.safetensors"),
        pixel_model_config=str(adm_reference / "tiny_adm_config.json"),
        clip_model=str(tiny_clip_dir),
        score_clip_model=str(tiny_clip_dir),
        classifier=str(tiny_resnet_classifier(root / "classifier")),
        lpips_weights=(str(trunk), str(lin)),
        device="cpu",
    )


def _settings(**changes) -> EvalSettings:
    """The same settings as the CLI flags of ``cli_run``, without the single-image timing runs
    and the warm-up (timings only; they change no prediction), to keep the tests fast."""
    base = EvalSettings(
        n_images=N_IMAGES,
        batch=BATCH,
        max_side=MAX_SIDE,
        latent=EditConfig(num_inference_steps=4, size=64, recon_steps=3),
        pixel=PixelConfig(timestep_respacing="10", skip_timesteps=6, aug_num=2),
        time_single=False,
        warmup=False,
        progress=False,
    )
    return EvalSettings(**{**base.__dict__, **changes})


@pytest.fixture(scope="module")
def resources(eval_models) -> Resources:
    """Models loaded once for the library runs of this module (the CLI run loads its own)."""
    return Resources(eval_models)


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, eval_models, shared_images) -> Path:
    """One uninterrupted run of the whole protocol through ``blendedit eval``."""
    out = tmp_path_factory.mktemp("eval") / "run-a"
    m = eval_models
    argv = [
        "eval", "--images", str(shared_images), "--out", str(out),
        "--n-images", str(N_IMAGES), "--batch", str(BATCH), "--seed", "0",
        "--max-side", str(MAX_SIDE), "--model", m.sd_model,
        "--pixel-model", m.pixel_model, "--pixel-model-config", m.pixel_model_config,
        "--clip-model", m.clip_model, "--score-clip-model", m.score_clip_model,
        "--classifier", m.classifier, "--lpips-weights", *m.lpips_weights,
        "--steps", "4", "--size", "64", "--recon-steps", "3",
        "--respacing", "10", "--skip-timesteps", "6", "--aug-num", "2",
        "--device", "cpu", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def test_cli_runs_the_whole_protocol(cli_run, capsys):
    out = cli_run
    report = _report(out)
    assert report["protocol"]["n_images"] == N_IMAGES and report["protocol"]["evaluated"] == 3
    assert [c["id"] for c in report["cases"]] == ["000-coffee", "001-astronaut", "002-chelsea"]
    assert list(report["methods"]) == list(DEFAULT_METHODS)
    for name, m in report["methods"].items():
        assert m["status"] == "ok", name
        r = m["results"]
        assert m["batch"] == BATCH and r["inputs"] == 3 and r["predictions"] == 6
        assert 0 <= r["precision_batch"] <= 1 and 0 <= r["precision_top1"] <= 1
        assert r["clip_score"]["masked_top1"] >= 0
        bg = r["background_top1"]
        assert bg["mse"] >= 0 and bg["lpips"] is not None and 0 < bg["ssim"] <= 1
        assert m["time"]["batch_mean_s"] > 0 and m["time"]["single_mean_s"] > 0
        for case in report["cases"]:
            folder = out / "predictions" / name / case["id"]
            meta = json.loads((folder / "meta.json").read_text())
            assert [p["rank"] for p in meta["predictions"]] == [1, 2]
            seeds = sorted(p["seed"] for p in meta["predictions"])
            assert seeds == [case["seed"], case["seed"] + 1]  # the same seeds for every method
            for p in meta["predictions"]:
                assert Image.open(folder / p["file"]).size == tuple(case["size"])
    # The stitched background is close to the photo; the raw decoder output is not.
    methods = report["methods"]
    assert (
        methods["latent"]["results"]["background_top1"]["psnr"]
        > methods["latent-decoded"]["results"]["background_top1"]["psnr"]
    )
    assert methods["diffusers-inpaint"]["settings"]["strength"] == pytest.approx(3.5 / 4)
    assert report["versions"]["torch"] and report["versions"]["diffusers"]
    md = (out / "report.md").read_text()
    for heading in ("Table 1: precision and diversity", "Table 2: inference time", "Background"):
        assert heading in md
    assert "`latent-decoder`" in md and "CLIP score" in md
    assert Image.open(out / "precision_vs_time.png").format == "PNG"
    grid = Image.open(out / "grid.png")
    assert grid.width == (1 + len(DEFAULT_METHODS)) * 196
    assert not list(out.rglob("*.tmp"))


def test_a_second_run_gives_the_same_report(
    cli_run, eval_models, resources, shared_images, tmp_path
):
    """Everything but the timings (wall-clock seconds) is identical."""
    run_eval(shared_images, tmp_path / "run-b", _settings(), eval_models, resources=resources)
    assert without_timings(_report(tmp_path / "run-b")) == without_timings(_report(cli_run))


def _counting(monkeypatch, fail: tuple[str, int] | None = None) -> Counter:
    """Count each method's generation calls; optionally raise at the n-th call of one method
    (a kill in the middle of a run)."""
    calls: Counter = Counter()
    real = eval_runner.build_runner

    def build(name, *args, **kwargs):
        runner = real(name, *args, **kwargs)
        run = runner.run

        def counted(*a, **k):
            calls[name] += 1
            if fail == (name, calls[name]):
                raise RuntimeError("killed")
            return run(*a, **k)

        runner.run = counted
        return runner

    monkeypatch.setattr(eval_runner, "build_runner", build)
    return calls


def test_killed_and_restarted_run_equals_an_uninterrupted_one(
    cli_run, eval_models, resources, shared_images, tmp_path, monkeypatch
):
    out = tmp_path / "run-c"
    calls = _counting(monkeypatch, fail=("latent-decoded", 2))
    with pytest.raises(RuntimeError, match="killed"):
        run_eval(shared_images, out, _settings(), eval_models, resources=resources)
    assert calls == {"latent": 3, "latent-decoded": 2}
    assert not (out / "report.json").exists()
    # A case killed while its files were being written: files but no meta.json.
    half = out / "predictions" / "latent-decoded" / "001-astronaut"
    half.mkdir()
    (half / "01-seed1.png").write_bytes(b"half a PNG")

    calls = _counting(monkeypatch)
    run_eval(shared_images, out, _settings(), eval_models, resources=resources)
    # Finished inputs are read back, never generated again.
    assert calls == {"latent-decoded": 2, **{m: 3 for m in DEFAULT_METHODS[2:]}}
    assert without_timings(_report(out)) == without_timings(_report(cli_run))

    # Once more: nothing to generate, and the cached predictions keep their measured times.
    first = _report(out)
    calls = _counting(monkeypatch)
    run_eval(shared_images, out, _settings(), eval_models, resources=resources)
    assert sum(calls.values()) == 0
    assert _report(out) == first


def test_missing_model_is_skipped_with_a_note_and_limit_is_partial(
    eval_models, shared_images, tmp_path
):
    models = EvalModels(**{**eval_models.__dict__, "pixel_model": None, "lpips_weights": None})
    settings = _settings(methods=("latent", "pixel", "local-clip"), limit=1, batch=1)
    report = run_eval(shared_images, tmp_path / "run", settings, models)
    for name in ("pixel", "local-clip"):
        assert report["methods"][name]["status"] == "skipped"
        assert "no pixel model given" in report["methods"][name]["note"]
    latent = report["methods"]["latent"]["results"]
    assert latent["inputs"] == 1 and latent["diversity"] is None
    assert latent["background_top1"]["lpips"] is None
    assert report["protocol"]["evaluated"] == 1 and report["protocol"]["n_images"] == N_IMAGES
    md = (tmp_path / "run" / "report.md").read_text()
    assert "`pixel`: skipped: no pixel model given" in md
    assert "partial: the first 1 of 3" in md and "no LPIPS weights" in md


def test_other_settings_or_inputs_are_refused_not_reused(eval_models, shared_images, tmp_path):
    out = tmp_path / "run"
    one = _settings(methods=("latent",), limit=1, batch=1, time_single=False)
    run_eval(shared_images, out, one, eval_models)
    with pytest.raises(InputError, match=r"latent predictions .* other settings \(.*guidance"):
        run_eval(
            shared_images,
            out,
            _settings(
                methods=("latent",),
                limit=1,
                batch=1,
                latent=EditConfig(num_inference_steps=4, size=64, guidance_scale=5.0),
            ),
            eval_models,
        )
    with pytest.raises(InputError, match="other inputs"):
        run_eval(shared_images, out, _settings(methods=("latent",), limit=1, seed=1), eval_models)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not an evaluation folder"):
        run_eval(shared_images, tmp_path / "busy", one, eval_models)


def test_cli_rejects_bad_arguments(capsys, shared_images, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--images", str(shared_images), "--out", str(tmp_path), "--methods", "x"])
    assert e.value.code == 2 and "unknown method" in capsys.readouterr().err
    argv = ["eval", "--images", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--classifier", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blendedit: error: ") and "\n" not in err.strip()
