"""Issue 25, finding 4: Cancel and a time limit stop an edit in every stage (encoding, denoising,
decoding, ranking, background reconstruction, paste-back, saving), through one mechanism
(:mod:`blendedit.frame.stop`), and the web editor's device lock is always released."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from blendedit.errors import Cancelled, InputError, TimeLimitError
from blendedit.frame import reconstruct as R
from blendedit.frame import stop as S
from blendedit.frame.results import Candidate
from blendedit.web.app import EditorApp
from blendedit.web.handlers import ServeOptions

REQUEST = SimpleNamespace(session_hash="tab-cancel")
FAST = {"num_inference_steps": 2, "size": 64, "rank": True}


def _photo_and_mask(shared_images: Path) -> tuple[Image.Image, np.ndarray]:
    photo = Image.open(shared_images / "chelsea.png").convert("RGB").resize((96, 64))
    mask = np.zeros((64, 96), bool)
    mask[16:44, 30:70] = True
    return photo, mask


# -- the library: a time limit in each stage -------------------------------------------------------


class Clock:
    """Stands in for the stop module's clock: jumps far ahead when a stage is reached."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def jump(self) -> None:
        self.now += 1e6


@pytest.fixture()
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(S, "time", c)
    return c


def _after(obj, name: str, clock: Clock, monkeypatch, calls: int = 1) -> list[int]:
    """Wrap ``obj.name`` so that the clock jumps once it has returned ``calls`` times."""
    real = getattr(obj, name)
    count = [0]

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        count[0] += 1
        if count[0] == calls:
            clock.jump()
        return out

    monkeypatch.setattr(obj, name, wrapped)
    return count


@pytest.mark.parametrize(
    "stage",
    ["encoding", "denoising", "decoding", "ranking", "background reconstruction", "background"],
)
def test_a_time_limit_stops_an_edit_in_each_stage(editor, shared_images, clock, monkeypatch, stage):
    photo, mask = _photo_and_mask(shared_images)
    settings = dict(FAST, num_images=2, batch_size=2, decode_batch_size=1)
    if stage == "encoding":  # over while the region was chosen
        _after(editor, "full_work_size", clock, monkeypatch)
    elif stage == "denoising":
        _after(editor, "prepare", clock, monkeypatch)
    elif stage == "decoding":  # between two decode chunks
        chunks = _after(editor.backbone, "decode_with", clock, monkeypatch)
    elif stage == "ranking":
        _after(editor, "decode", clock, monkeypatch)
    elif stage == "background reconstruction":  # between two Adam steps
        settings.update(background="decoder", recon_steps=50)
        steps = _after(R, "reconstruction_loss", clock, monkeypatch, calls=3)
    else:  # the first kept result's background and paste-back
        _after(editor.clip, "score", clock, monkeypatch)
    with pytest.raises(TimeLimitError) as e:
        editor(photo, mask, "a hat", time_limit=100, **settings)
    assert str(e.value) == (
        f"time limit: the edit ran over its 100 s and was stopped during {stage}"
    )
    if stage == "decoding":
        assert chunks[0] == 1  # the second chunk never ran
    if stage == "background reconstruction":
        assert steps[0] == 3  # 3 of 50 steps


def test_a_time_limit_stops_saving_between_files(
    editor, shared_images, clock, monkeypatch, tmp_path
):
    photo, mask = _photo_and_mask(shared_images)
    result = editor(photo, mask, "a hat", num_images=3, **FAST)
    _after(Candidate, "save", clock, monkeypatch)
    with S.stopping(time_limit=100), pytest.raises(TimeLimitError, match="during saving"):
        result.save(tmp_path)
    assert len(list(tmp_path.iterdir())) == 1


def test_a_stop_callable_cancels_and_nothing_stops_without_one(editor, shared_images):
    photo, mask = _photo_and_mask(shared_images)
    ticks = []

    def progress(done, total):
        ticks.append(done)

    with pytest.raises(Cancelled, match="cancelled during denoising"):
        editor(photo, mask, "a hat", num_images=1, progress=progress, stop=lambda: len(ticks) >= 1,
               **FAST)  # fmt: skip
    assert ticks == [1]
    S.checkpoint("anything")  # outside a scope: nothing to stop
    for bad, match in [(0, "time_limit: 0 must be"), (float("nan"), "time_limit: nan must be"),
                       ("soon", "time_limit: 'soon' is not a number")]:  # fmt: skip
        with pytest.raises(InputError, match=match):
            editor(photo, mask, "a hat", time_limit=bad, **FAST)
    with pytest.raises(InputError, match="stop: 'yes' is not a callable"):
        editor(photo, mask, "a hat", stop="yes", **FAST)


def test_the_pixel_method_stops_the_same_way(tiny_clip_dir, shared_images):
    ref = Path(__file__).resolve().parents[1] / "data" / "reference" / "adm"
    if not ref.is_dir():
        pytest.skip(f"ADM reference data not found at {ref}")
    from blendedit.pixel.pipeline import BlendedDiffusion

    adm = BlendedDiffusion.from_pretrained(
        ref / "tiny_adm.safetensors", model_config=ref / "tiny_adm_config.json",
        clip_model=str(tiny_clip_dir),
    )  # fmt: skip
    photo, mask = _photo_and_mask(shared_images)
    ticks: list[int] = []
    with pytest.raises(Cancelled, match="cancelled during denoising"):
        adm(photo, mask, "a hat", num_images=1, timestep_respacing="20", skip_timesteps=5,
            progress=lambda done, total: ticks.append(done),
            stop=lambda: len(ticks) >= 2)  # fmt: skip
    assert ticks == [1, 2]


# -- the web editor: Cancel and --max-seconds during a long background reconstruction ------------


def _app(editor, tmp_path: Path, **options) -> EditorApp:
    app = EditorApp(
        editor,
        model_info={"name": str(editor.name)},
        options=ServeOptions(max_results=4, preview_side=320, **options),
        workdir=tmp_path / "web",
    )
    app.build()
    # The page has no control for the reconstruction's steps: a long one by default here.
    defaults = editor.default_config().replace(recon_steps=3000)
    app._defaults = lambda: defaults
    return app


def _generate(app: EditorApp, shared_images: Path) -> tuple[dict, list]:
    st = app.on_upload(str(shared_images / "chelsea.png"), None, REQUEST)[0]
    w, h = st.canvas
    layer = np.zeros((h, w, 4), np.uint8)
    layer[h // 3 : h // 2, w // 3 : w // 2] = (255, 0, 255, 128)
    values = {
        "state": st, "editor": {"background": None, "layers": [layer], "composite": None},
        "prompt": "a hat", "num_images": 1, "steps": 2, "guidance": 7.5, "blend_start": 0.25,
        "seed": 1, "random_seed": False, "method": "latent", "background": "decoder",
        "negative_prompt": "", "scheduler": "ddim", "size": 64, "mask_shrink": "auto",
        "feather": 8, "batch_size": 1, "invert": False,
    }  # fmt: skip
    by_name = {name: comp for comp, name in app._names.items()}
    return {by_name[k]: v for k, v in values.items()}, []


def _loss_steps(monkeypatch) -> tuple[threading.Event, list[int]]:
    """Counts the reconstruction's Adam steps; the event is set at the third."""
    started, count = threading.Event(), [0]
    real = R.reconstruction_loss

    def loss(*args, **kwargs):
        count[0] += 1
        if count[0] == 3:
            started.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(R, "reconstruction_loss", loss)
    return started, count


@pytest.mark.parametrize("how", ["cancel", "tab closed"])
def test_cancel_during_decoder_reconstruction_returns_promptly_and_frees_the_device(
    editor, shared_images, tmp_path, monkeypatch, how
):
    app = _app(editor, tmp_path)
    started, steps = _loss_steps(monkeypatch)
    ui, _ = _generate(app, shared_images)
    out: list = []
    worker = threading.Thread(
        target=lambda: out.append(app.generate(ui, REQUEST, lambda *a, **k: None)), daemon=True
    )
    try:
        worker.start()
        assert started.wait(120), "the reconstruction never started"
        t0 = time.monotonic()
        if how == "cancel":
            assert app.cancel(REQUEST) == "Cancelled."
        else:
            app.unload(REQUEST)
        worker.join(timeout=30)
        assert not worker.is_alive(), "Cancel did not stop the reconstruction"
        assert time.monotonic() - t0 < 10
        assert out[0][1] == "Cancelled." and steps[0] < 100  # of 3000 Adam steps
        assert not app._device_lock.locked()
    finally:
        worker.join(timeout=600)  # before the fix: let the run finish before the next test
        app.close()


def test_the_time_limit_stops_a_long_generate_and_frees_the_device(
    editor, shared_images, tmp_path, monkeypatch
):
    app = _app(editor, tmp_path, max_seconds=2)
    _, steps = _loss_steps(monkeypatch)
    ui, _ = _generate(app, shared_images)
    t0 = time.monotonic()
    try:
        with pytest.raises(TimeLimitError) as e:
            app.generate(ui, REQUEST, lambda *a, **k: None)
        assert time.monotonic() - t0 < 30 and steps[0] < 3000
        msg = str(e.value)
        assert msg.startswith("time limit: the edit ran over its 2 s and was stopped during ")
        assert msg.endswith("(server option --max-seconds)") and "\n" not in msg
        assert not app._device_lock.locked()
    finally:
        app.close()


def test_max_seconds_and_max_layers_are_serve_flags():
    from blendedit.cli import build_parser

    args = build_parser().parse_args(["serve", "--max-seconds", "30", "--max-layers", "2"])
    assert (args.max_seconds, args.max_layers) == (30, 2)
    defaults = build_parser().parse_args(["serve"])
    assert (defaults.max_seconds, defaults.max_layers) == (600, 4)
    with pytest.raises(InputError, match="max_seconds: 0"):
        ServeOptions(max_seconds=0).check()
