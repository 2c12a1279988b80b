"""Issue 25, finding 2: the page's LoRA field read the server's file system. Now the LoRAs come
only from the operator's list (``--lora``, ``--lora-dir``), offered by name; a client's path or hub
id is refused in one line that says nothing about the server's files; and no error the page shows
holds a server path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from blendedit.cli import build_parser, main
from blendedit.errors import InputError, one_line, scrub_paths
from blendedit.web.app import EditorApp
from blendedit.web.handlers import ServeOptions
from blendedit.web.settings import LoraChoices

REQUEST = SimpleNamespace(session_hash="tab-lora")


@pytest.fixture()
def lora_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "operator-loras"
    folder.mkdir()
    for name in ("watercolour", "pencil"):
        (folder / f"{name}.safetensors").write_bytes(b"not read before it is chosen")
    (folder / "notes.txt").write_text("not a LoRA")
    return folder


@pytest.fixture()
def app(editor, tmp_path: Path, lora_dir: Path):
    a = EditorApp(
        editor,
        options=ServeOptions(max_results=4, preview_side=320),
        workdir=tmp_path / "web",
        loras=LoraChoices.from_options(lora_dir=str(lora_dir)),
    )
    a.build()
    yield a
    a.close()


def _values(app: EditorApp, shared_images: Path, loras: str) -> dict:
    st = app.on_upload(str(shared_images / "chelsea.png"), None, REQUEST)[0]
    w, h = st.canvas
    layer = np.zeros((h, w, 4), np.uint8)
    layer[h // 3 : h // 2, w // 3 : w // 2] = (255, 0, 255, 128)
    return {
        "state": st, "editor": {"background": None, "layers": [layer], "composite": None},
        "prompt": "a hat", "num_images": 1, "steps": 2, "guidance": 7.5, "blend_start": 0.25,
        "seed": 1, "random_seed": False, "method": "latent", "background": "stitch",
        "negative_prompt": "", "scheduler": "ddim", "size": 64, "mask_shrink": "auto",
        "feather": 8, "batch_size": 1, "invert": False, "loras": loras,
    }  # fmt: skip


@pytest.mark.parametrize(
    "typed",
    [
        "/etc/hostname",  # a file that exists
        "/nonexistent/x.safetensors",  # one that does not
        "{lora_dir}",  # the operator's folder itself
        "{lora_dir}/watercolour.safetensors:0.5",  # an offered LoRA, by its path
        "../operator-loras/pencil.safetensors",
        "someone/some-lora",  # a hub id
        "someone/some-lora/file.safetensors:0.8",
    ],
)
def test_a_path_or_hub_id_typed_in_the_page_is_refused_alike(
    app, shared_images, lora_dir, monkeypatch, typed
):
    def no_loading(*args, **kwargs):
        raise AssertionError("a LoRA was loaded from what a client typed")

    monkeypatch.setattr(app.editor, "load_loras", no_loading)
    monkeypatch.setattr("blendedit.latent.lora.resolve_lora_file", no_loading)
    text = typed.format(lora_dir=lora_dir)
    values = _values(app, shared_images, text)
    with pytest.raises(InputError) as e:
        app._edit_request(values["state"], values)
    msg = str(e.value)
    shown = text if len(text) <= 60 else text[:57] + "..."
    # The same answer whether the path exists or not: nothing learnt about the server's files.
    assert msg == (f"lora: {shown!r} is not a LoRA of this server; offered: pencil, watercolour")


def test_offered_names_are_applied_with_their_scale(app, shared_images, lora_dir, monkeypatch):
    loaded = []
    monkeypatch.setattr(app.editor, "load_loras", lambda specs: loaded.append(specs))
    values = _values(app, shared_images, "watercolour:0.5\npencil")
    job = app._edit_request(values["state"], values)
    assert job.loras == [
        f"{(lora_dir / 'watercolour.safetensors').resolve()}:0.5",
        f"{(lora_dir / 'pencil.safetensors').resolve()}:1",
    ]
    for bad, match in [("pencil:lots", "'lots' after the ':' is not a scale"),
                       ("pencil:nan", "the scale must be a finite number"),
                       (",".join(["pencil"] * 17), "17 LoRAs; at most 16")]:  # fmt: skip
        values = _values(app, shared_images, bad)
        with pytest.raises(InputError, match=match):
            app._edit_request(values["state"], values)


def test_the_page_shows_names_never_paths(app, lora_dir):
    field = next(b for b in app.demo.blocks.values() if getattr(b, "elem_id", "") == "loras")
    assert "offered: pencil, watercolour" in field.info
    assert str(lora_dir) not in field.info and str(lora_dir) not in str(field.value)
    choices = app.lora_choices
    loaded = [f"{(lora_dir / 'pencil.safetensors').resolve()}:0.7"]
    assert choices.shown(loaded) == ["pencil:0.7"]
    assert LoraChoices().offered().startswith("none are offered by this server")
    # The model too: the page names it, not the folder it was loaded from.
    model = Path(str(app.editor.name))
    intro = next(b.value for b in app.demo.blocks.values() if "interactive editor" in str(
        getattr(b, "value", "")))  # fmt: skip
    assert f"Model `{model.name}`" in intro and str(model.parent) not in intro


def test_lora_dir_is_a_serve_flag_checked_before_the_model_loads(tmp_path, capsys, lora_dir):
    args = build_parser().parse_args(["serve", "--lora-dir", str(lora_dir)])
    assert args.lora_dir == str(lora_dir)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edit", "x.png", "m.png", "p", "--lora-dir", "d"])
    capsys.readouterr()
    missing = tmp_path / "nope"
    assert main(["serve", "--device", "cpu", "--quiet", "--lora-dir", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"blendedit: error: lora_dir: {missing} is not a folder"
    (lora_dir / "a,b.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="may not be empty or hold ':' or ','"):
        LoraChoices.from_options(lora_dir=str(lora_dir))
    (lora_dir / "a,b.safetensors").unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "pencil.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="lora_dir: two LoRAs are named 'pencil'"):
        LoraChoices.from_options([str(other / "pencil.safetensors")], str(lora_dir))


def test_errors_in_the_page_never_show_a_server_path(app, tmp_path):
    broken = tmp_path / "uploads" / "4f2a9c" / "broken.png"
    broken.parent.mkdir(parents=True)
    good = np.zeros((64, 64, 3), np.uint8)
    from PIL import Image

    Image.fromarray(good).save(broken)
    broken.write_bytes(broken.read_bytes()[:60])  # the header, then nothing
    with pytest.warns(UserWarning):  # gr.Warning outside a request
        out = app.on_upload(str(broken), None, REQUEST)
    status = out[3]
    assert "broken.png" in status and str(tmp_path) not in status and "/uploads/" not in status
    assert scrub_paths(f"cannot read '{app.workdir}/tab/x.png' (no)") == "cannot read 'x.png' (no)"
    e = OSError(f"[Errno 13] Permission denied: '{tmp_path}/web/out.png'")
    assert one_line(e) == "[Errno 13] Permission denied: 'out.png'"
    kept = "queue 1/4 at http://127.0.0.1:7860/gradio_api/x, ratio 3/2"
    assert scrub_paths(kept) == kept
