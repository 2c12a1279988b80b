"""Time per click of the web editor's selection panel on big photos (issue 21), for docs/web.md.

The editor's handlers (``EditorApp.on_upload``, ``on_select_view``, ``on_pick``; no browser, no
server) with a tiny random-weight SAM at the released model's resolutions
(``tests/tiny_segmenters.build_sam(size=1024, patch=16)``) on a 12 MP and a 48 MP photo: the
segmenter sees the editor's preview (``--preview-side``, 1280 px), so a click's cost does not grow
with the photo; the first click embeds the preview, the next ones decode only.

    python tools/web_select_clicks.py [--clicks 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from blendedit.segment import load_segmenter  # noqa: E402
from blendedit.web.app import EditorApp  # noqa: E402
from blendedit.web.handlers import ServeOptions  # noqa: E402
from blendedit.web.selecting import Selector  # noqa: E402
from tiny_segmenters import build_sam  # noqa: E402

REQUEST = SimpleNamespace(session_hash="bench")


def main() -> None:
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clicks", type=int, default=5)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="web-clicks-"))
    # Selecting never runs the edit model: a stand-in with what the page's header reads.
    editor = SimpleNamespace(name="none", dtype=torch.float32, device="cpu", loras=[])
    sam = str(build_sam(tmp / "sam", size=1024, patch=16))
    for w, h in ((4000, 3000), (8000, 6000)):
        path = tmp / f"{w}x{h}.jpg"
        small = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(path, quality=90)
        app = EditorApp(editor, options=ServeOptions(), workdir=tmp / f"web-{w}",
                        selector=Selector(sam, load_segmenter))  # fmt: skip
        st = app.on_upload(str(path), None, REQUEST)[0]
        app.on_select_view(st)
        app.selector.segmenter(st.picks.selection())  # loaded before timing
        times = []
        for i in range(args.clicks + 1):
            pick = SimpleNamespace(index=[300 + 40 * i, 300 + 20 * i])
            t0 = time.perf_counter()
            st = app.on_pick(st, "add", pick, REQUEST)[0]
            times.append(time.perf_counter() - t0)
        later = float(np.median(times[1:]))
        print(f"{w * h / 1e6:.0f} MP: first click {times[0]:.2f} s, later clicks {later:.2f} s")
        app.close()


if __name__ == "__main__":
    main()
