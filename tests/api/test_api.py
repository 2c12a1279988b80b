"""The API on loopback with the tiny models: the official ``openai`` client, plain HTTP for the
native endpoint and its progress events, OpenAI's errors, 429 beyond the queue."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from api_fixtures import FAST, HOLE, KEY, png, running
from PIL import Image

from blendedit.api.backend import LocalBackend
from blendedit.api.settings import ApiOptions


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def _form(photo: Image.Image, mask: Image.Image | None, **fields: Any) -> dict[str, Any]:
    files = {"image": ("photo.png", png(photo), "image/png")}
    if mask is not None:
        files["mask"] = ("mask.png", png(mask), "image/png")
    data = {"prompt": "a red square", **FAST, **{k: str(v) for k, v in fields.items()}}
    return {"files": files, "data": data}


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _outside_unchanged(result: Image.Image, photo: Image.Image) -> None:
    got, want = np.asarray(result.convert("RGB")), np.asarray(photo)
    x0, y0, x1, y1 = HOLE
    outside = np.ones(want.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(got[outside], want[outside])
    assert not np.array_equal(got[~outside], want[~outside])  # and an edit inside


def test_openai_client_edits_two_ranked_images(server, photo, mask):
    r = client(server).images.edit(
        image=("photo.png", png(photo), "image/png"),
        mask=("mask.png", png(mask), "image/png"),
        prompt="a red square",
        n=2,
        size="64x64",
        extra_body=FAST,
    )
    assert len(r.data) == 2 and r.created > 0
    for item in r.data:
        im = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert im.size == photo.size and im.format == "PNG"
        assert "XML:com.adobe.xmp" in im.info and "a red square" in im.info["parameters"]
        _outside_unchanged(im, photo)


def test_without_a_mask_the_photos_own_transparent_pixels_are_edited(server, photo, mask):
    rgba = photo.convert("RGBA")
    rgba.putalpha(mask.getchannel("A"))
    r = client(server).images.edit(
        image=("photo.png", png(rgba), "image/png"), prompt="a cat", extra_body=FAST
    )
    im = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json)))
    assert im.mode == "RGB"  # the result is opaque
    _outside_unchanged(im, photo)


def test_url_results_are_served_by_the_app(server, photo, mask):
    r = client(server).images.edit(
        image=("photo.png", png(photo), "image/png"), mask=("m.png", png(mask), "image/png"),
        prompt="x", response_format="url", output_format="webp", extra_body=FAST,
    )  # fmt: skip
    url = r.data[0].url
    assert url.startswith(server + "/v1/results/") and url.endswith(".webp")
    got = httpx.get(url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(got.content)).size == photo.size
    assert httpx.get(server + "/v1/results/" + "A" * 32 + ".png").status_code == 404


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 9}, "n"),
        ({"steps": "many"}, "steps"),
        ({"guidance": "nan"}, "guidance_scale"),
        ({"blend_start": "2"}, "blend_start"),
        ({"response_format": "gif"}, "response_format"),
        ({"frobnicate": "1"}, "frobnicate"),
        ({"size": "big"}, "size"),
        ({"compile": "true"}, "compile"),  # the server's model, compiled for good: not a request's
    ],
)
def test_bad_fields_are_400_naming_the_field(server, photo, mask, fields, param):
    r = httpx.post(server + "/v1/images/edits", headers=_auth(), **_form(photo, mask, **fields))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert "\n" not in err["message"] and "/tmp" not in err["message"]


def test_openai_errors_through_the_client(server, photo, mask):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.images.edit(image=("p.png", png(photo), "image/png"), prompt="x", n=2)  # no mask
    assert e.value.body["param"] == "mask"
    with pytest.raises(openai.BadRequestError) as e:
        c.images.edit(image=("p.png", b"not an image", "image/png"), prompt="x")
    assert e.value.body["param"] == "image"
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, "wrong-key").images.edit(image=("p.png", png(photo)), prompt="x")
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        c.images.edit(image=("p.png", png(photo)), mask=("m.png", png(mask)), prompt="x",
                      model="dall-e-2")  # fmt: skip
    assert e.value.body["code"] == "model_not_found"
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (900, 900, 3), np.uint8))
    with pytest.raises(openai.APIStatusError) as e:  # 2.4 MB > --max-upload-mb 1
        c.images.edit(image=("big.png", png(big)), mask=("m.png", png(mask)), prompt="x")
    assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"


def test_keys_models_and_health(server):
    assert httpx.get(server + "/v1/models").status_code == 401  # no key
    r = httpx.get(server + "/v1/models", headers=_auth())
    assert r.json()["data"][0]["id"] == "tiny-sd"
    assert [m.id for m in client(server).models.list()] == ["tiny-sd"]
    assert httpx.get(server + "/healthz").json()["status"] == "ok"
    r = httpx.get(server + "/v1/nothing", headers=_auth())
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


def test_native_endpoint_returns_seeds_scores_timings_settings(server, photo, mask):
    r = httpx.post(
        server + "/v1/blendedit/edits", headers=_auth(), timeout=120,
        **_form(photo, mask, n=3, seed=7, guidance=5),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seeds"] == [d["seed"] for d in body["data"]] and sorted(body["seeds"]) == [7, 8, 9]
    scores = body["scores"]
    assert scores == sorted(scores, reverse=True)  # best first
    assert body["timings"]["total"] > 0
    s = body["settings"]
    assert s["settings"]["num_inference_steps"] == 3 and s["settings"]["guidance_scale"] == 5
    assert [x["rank"] for x in s["results"]] == [1, 2, 3]


def _events(text: str) -> list[tuple[str, Any]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_native_endpoint_streams_progress_events(server, photo, mask):
    with httpx.stream(
        "POST", server + "/v1/blendedit/edits", headers={**_auth(), "Accept": "text/event-stream"},
        timeout=120, **_form(photo, mask, n=1, seed=3),
    ) as r:  # fmt: skip
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.read().decode())
    kinds = [k for k, _ in events]
    assert kinds[0] == "queued" and kinds[-1] == "result"
    progress = [d for k, d in events if k == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 3
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    assert events[-1][1]["seeds"] == [3]


class _Gate:
    """The tiny editor behind a gate: an edit waits until the test opens it."""

    def __init__(self, editor: Any) -> None:
        self.editor, self.method, self.open = editor, editor.method, threading.Event()
        self.default_config = editor.default_config

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        assert self.open.wait(60)
        return self.editor(*args, **kwargs)


def test_requests_beyond_the_queue_get_429_with_retry_after(editor, photo, mask):
    options = ApiOptions(max_queue=0, per_key=8).check()
    gate = _Gate(editor)
    backend = LocalBackend(gate, options, "tiny-sd")
    with running(backend, options) as url:
        first: dict[str, Any] = {}
        t = threading.Thread(
            target=lambda: first.update(r=httpx.post(
                url + "/v1/images/edits", timeout=120, **_form(photo, mask))),
        )  # fmt: skip
        t.start()
        deadline = time.monotonic() + 30
        while backend.health()["running"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = httpx.post(url + "/v1/images/edits", timeout=30, **_form(photo, mask))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "queue_full"
        gate.open.set()
        t.join(60)
        assert first["r"].status_code == 200
        assert backend.health()["served"] == 1 and backend.health()["refused"] == 1
    backend.close()


def test_per_key_limit_is_429(editor, photo, mask):
    options = ApiOptions(max_queue=8, per_key=1, api_keys=("a", "b")).check()
    gate = _Gate(editor)
    backend = LocalBackend(gate, options, "tiny-sd")
    with running(backend, options) as url:
        t = threading.Thread(
            target=lambda: httpx.post(url + "/v1/images/edits", headers=_auth("a"), timeout=120,
                                      **_form(photo, mask)),
        )  # fmt: skip
        t.start()
        deadline = time.monotonic() + 30
        while backend.health()["running"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = httpx.post(url + "/v1/images/edits", headers=_auth("a"), **_form(photo, mask))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        gate.open.set()  # key b is not limited by a's request
        r = httpx.post(url + "/v1/images/edits", headers=_auth("b"), timeout=120,
                       **_form(photo, mask))  # fmt: skip
        assert r.status_code == 200
        t.join(60)
    backend.close()


def test_the_command_refuses_a_public_address_without_keys(tmp_path, capsys):
    from blendedit.cli import main

    assert main(["api", "--host", "0.0.0.0", "--model", str(tmp_path)]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "api-key" in lines[0] and "0.0.0.0" in lines[0]
    keys = tmp_path / "keys.txt"
    keys.write_text("# ours\nk1\n\nk2\n")
    from blendedit.api.cli import read_keys

    assert read_keys(["k0", "k1"], str(keys)) == ("k0", "k1", "k2")


def test_a_client_that_leaves_stops_its_edit(editor, photo, mask):
    options = ApiOptions().check()
    backend = LocalBackend(editor, options, "tiny-sd")
    with running(backend, options) as url:
        form = _form(photo, mask, steps=400, size=64)
        with httpx.stream("POST", url + "/v1/blendedit/edits?", timeout=60,
                          headers={"Accept": "text/event-stream"}, **form) as r:  # fmt: skip
            for line in r.iter_lines():
                if line.startswith("event: progress"):
                    break  # the edit is running: leave
        deadline = time.monotonic() + 30
        while backend.health()["running"]:
            assert time.monotonic() < deadline, "the edit went on without its client"
            time.sleep(0.05)
        assert backend.failed == 1 and backend.served == 0
    backend.close()


def test_the_time_limit_stops_an_edit_with_a_500(editor, photo, mask):
    options = ApiOptions(max_seconds=0.05).check()
    backend = LocalBackend(editor, options, "tiny-sd")
    with running(backend, options) as url:
        r = httpx.post(url + "/v1/images/edits", timeout=60, **_form(photo, mask, steps=400))
    backend.close()
    assert r.status_code == 500
    err = r.json()["error"]
    assert (
        err["type"] == "server_error" and err["code"] == "time_limit" and "\n" not in err["message"]
    )


def test_the_command_serves_on_loopback(tiny_sd_dir, tiny_clip_dir, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-c", "import sys; from blendedit.cli import main; sys.exit(main())",
        "api", "--model", str(tiny_sd_dir), "--clip-model", str(tiny_clip_dir), "--device", "cpu",
        "--offline", "--port", str(port), "--quiet", "--api-key", "k", "--max-n", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == f"http://127.0.0.1:{port}/v1"
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=_auth("k")).json()
        assert models["data"][0]["id"] == tiny_sd_dir.name  # no server path
        r = client(f"http://127.0.0.1:{port}", "k").images.edit(
            image=("p.png", png(photo := _photo())), mask=("m.png", png(_mask())), prompt="x",
            n=2, size="64x64", extra_body=FAST,
        )  # fmt: skip
        assert len(r.data) == 2
        with pytest.raises(openai.BadRequestError):
            client(f"http://127.0.0.1:{port}", "k").images.edit(
                image=("p.png", png(photo)), mask=("m.png", png(_mask())), prompt="x", n=3
            )
    finally:
        proc.terminate()
        proc.wait(30)


def _photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))


def _mask() -> Image.Image:
    a = np.full((64, 64, 4), 255, np.uint8)
    a[16:40, 16:40, 3] = 0
    return Image.fromarray(a, "RGBA")


def test_photo_and_mask_checked_before_decoding(server, photo, mask):
    huge = Image.new("1", (5000, 5000))  # a few KB whose header says 25 MP
    r = httpx.post(
        server + "/v1/images/edits", headers=_auth(),
        files={"image": ("huge.png", png(huge))}, data={"prompt": "x"},
    )  # fmt: skip
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "image" and "5000x5000" in err["message"]
    for bad, words in [
        (mask.resize((32, 32)), "does not match"),
        (mask.convert("RGB"), "no alpha channel"),
        (Image.new("RGBA", photo.size, (0, 0, 0, 255)), "no fully transparent pixel"),
    ]:
        r = httpx.post(
            server + "/v1/images/edits", headers=_auth(), timeout=60,
            files={"image": ("p.png", png(photo)), "mask": ("m.png", png(bad))},
            data={"prompt": "x"},
        )  # fmt: skip
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == "mask" and words in err["message"], err
