"""Train the toy world's text segmenter: a CLIPSeg (Lüddecke & Ecker 2022, sec. 3) on ``toy-clip``.

The toy world's CLIP (``../shared/toyworld/toy-clip``, frozen) is the backbone, as CLIP is
CLIPSeg's; the decoder (FiLM conditioning on the text embedding, 3 transformer layers over the
CLIP activations of layers 1-3, a transposed convolution back to 64 px) is trained on the scene
generator's scenes (seed 0), whose objects' shapes the generator draws exactly: for a caption
"a {colour} {shape}" the target is the coverage of every object of that class in the scene (the
main object or a distractor), empty when none is. Captions: the main object's half the time, a
distractor's a quarter, any class otherwise.

    python tools/train_toy_segmenter.py OUT [--steps 1500] [--batch 32] [--scenes 4000]

writes a ``CLIPSegForImageSegmentation`` folder with its processor (loaded by
``blendedit.segment.load_segmenter(OUT)``). The repository ships the result in
``examples/toy-segmenter/`` (about 3 MB). Measure it with ``tools/toy_segmenter_report.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from blendedit.eval.toyworld import World, import_world  # noqa: E402


def scene_objects(
    data, seed: int, index: int
) -> tuple[np.ndarray, list[tuple[int, int, np.ndarray]]]:
    """The generator's scene (seed, index) with every object: image (64, 64, 3) uint8 and
    [(shape, colour, coverage (64, 64) float32)], main object last. Replays ``data.sample``'s
    random draws; the image is checked against ``data.sample``'s."""
    rng = np.random.default_rng([seed, index])
    img = data.background(rng)
    shape, colour = int(rng.integers(len(data.SHAPES))), int(rng.integers(len(data.COLOURS)))
    s = float(rng.uniform(16, 32))
    cx, cy = rng.uniform(s / 2 + 1, data.SIZE - s / 2 - 1, size=2)
    boxes = [(cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)]
    n_d = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
    objects, placed = [], 0
    for _ in range(n_d * 10):
        if placed == n_d:
            break
        ds = float(rng.uniform(6, 10))
        dx, dy = rng.uniform(ds / 2 + 1, data.SIZE - ds / 2 - 1, size=2)
        box = (dx - ds / 2 - 2, dy - ds / 2 - 2, dx + ds / 2 + 2, dy + ds / 2 + 2)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
            continue
        boxes.append(box)
        dcol = int(rng.integers(len(data.COLOURS)))
        dshape = int(rng.integers(len(data.SHAPES)))
        alpha = data.shape_alpha(dshape, dx, dy, ds)
        data.paint(img, alpha, np.array(data.COLOURS[data.COLOUR_NAMES[dcol]], np.float32))
        objects.append((dshape, dcol, alpha))
        placed += 1
    main = data.shape_alpha(shape, cx, cy, s)
    for k, (_, _, a) in enumerate(objects):  # the main object is drawn over the distractors
        objects[k] = (objects[k][0], objects[k][1], a * (1 - main))
    objects.append((shape, colour, main))
    ref, _ = data.sample(seed, index)
    rgb = np.clip(
        np.array(data.COLOURS[data.COLOUR_NAMES[colour]], np.float32) + rng.normal(0, 8, 3), 0, 255
    )
    data.paint(img, main, rgb)
    assert (np.clip(np.rint(img), 0, 255).astype(np.uint8) == ref).all(), "generator changed"
    return ref, objects


def target(objects, shape: int, colour: int) -> np.ndarray:
    """Coverage (64, 64) of every object of class (shape, colour)."""
    out = np.zeros((64, 64), np.float32)
    for s, c, a in objects:
        if (s, c) == (shape, colour):
            out = np.maximum(out, a)
    return out


def pick_caption(rng, objects) -> tuple[int, int]:
    u = rng.random()
    if u < 0.5 or len(objects) == 1:
        s, c, _ = objects[-1]
    elif u < 0.75:
        s, c, _ = objects[rng.integers(len(objects) - 1)]
    else:
        return int(rng.integers(5)), int(rng.integers(6))
    return int(s), int(c)


def build(world: World, seed: int = 0):
    """A CLIPSeg whose CLIP is toy-clip's (weights copied, frozen) and a fresh decoder; its
    processor (toy-clip's tokenizer, a 64 px stretch to square with toy-clip's normalisation)."""
    from transformers import (
        CLIPModel,
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
    )
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    clip = CLIPModel.from_pretrained(world.clip)
    c = clip.config
    torch.manual_seed(seed)
    config = CLIPSegConfig(
        text_config=c.text_config.to_dict(), vision_config=c.vision_config.to_dict(),
        projection_dim=c.projection_dim, extract_layers=[1, 2, 3], reduce_dim=64,
        decoder_num_attention_heads=4, decoder_intermediate_size=256, conditional_layer=0,
    )  # fmt: skip
    model = CLIPSegForImageSegmentation(config)
    missing, unexpected = model.clip.load_state_dict(clip.state_dict(), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    from transformers import CLIPImageProcessor

    ref = CLIPImageProcessor.from_pretrained(world.clip)
    images = ViTImageProcessorPil(
        size={"height": 64, "width": 64}, image_mean=ref.image_mean, image_std=ref.image_std
    )
    tokenizer = CLIPTokenizer.from_pretrained(world.clip)
    return model, CLIPSegProcessor(image_processor=images, tokenizer=tokenizer)


@torch.no_grad()
def features(model, processor, data, n: int, chunk: int = 250):
    """The frozen CLIP's part, computed once: for training scenes 0..n-1 (generator seed 0) the
    vision activations the decoder reads ((n, T, D) per extracted layer) and each scene's
    objects; the 30 captions' conditional embeddings (30, P)."""
    acts: list[list[torch.Tensor]] = [[] for _ in model.extract_layers]
    scenes = []
    for lo in range(0, n, chunk):
        part = [scene_objects(data, 0, i) for i in range(lo, min(n, lo + chunk))]
        scenes += [objects for _, objects in part]
        pixels = processor.image_processor([img for img, _ in part], return_tensors="pt")
        out = model.clip.vision_model(
            pixel_values=pixels["pixel_values"], output_hidden_states=True
        )
        for k, layer in enumerate(model.extract_layers):
            acts[k].append(out.hidden_states[layer + 1])
    text = processor.tokenizer(list(data.CAPTIONS), padding=True, return_tensors="pt")
    cond = model.clip.get_text_features(**text)
    cond = getattr(cond, "pooler_output", cond)  # (30, P)
    return [torch.cat(a) for a in acts], scenes, cond


def train(out: Path, steps: int, batch: int, scenes: int, lr: float = 2e-3) -> None:
    """Only the decoder learns (CLIPSeg keeps CLIP frozen): binary cross-entropy between its
    64 px logits and the coverage of the caption's objects."""
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two shared ones
    torch.manual_seed(0)
    world = World()
    data = import_world(world.root, "data")
    model, processor = build(world)
    t0 = time.perf_counter()
    acts, objects, cond = features(model, processor, data, scenes)
    print(f"features of {scenes} scenes in {time.perf_counter() - t0:.0f} s", flush=True)
    params = list(model.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(0)
    model.decoder.train()
    for step in range(steps):
        idx = rng.integers(scenes, size=batch)
        picks = [pick_caption(rng, objects[i]) for i in idx]
        tgt = torch.from_numpy(
            np.stack([target(objects[i], *p) for i, p in zip(idx, picks, strict=True)])
        )
        cls = torch.tensor([data.class_id(s, c) for s, c in picks])
        logits = model.decoder([a[idx] for a in acts], cond[cls]).logits  # (B, 64, 64)
        loss = F.binary_cross_entropy_with_logits(logits, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"step {step} loss {loss.item():.4f} {time.perf_counter() - t0:.0f} s", flush=True
            )
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    print(f"wrote {out} in {time.perf_counter() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--scenes", type=int, default=4000, help="training scenes (generator seed 0)")
    a = ap.parse_args()
    train(Path(a.out), a.steps, a.batch, a.scenes)


if __name__ == "__main__":
    main()
