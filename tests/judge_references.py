"""The judges' reference layouts and forwards, written from their public sources for the tests.

Each writer saves tiny random weights in the checkpoint layout the judge's published file has;
each reference scores images as the judge's own code does (PickScore's model card, HPS v2's
``score.py`` on open_clip's ViT, the LAION aesthetic predictor's ``simple_inference.py``), with
plain torch where the reference package (open_clip, needing torchvision) cannot be installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from tiny_models import tiny_clip, tiny_tokenizer

# ------------------------------------------------------------------ PickScore: a CLIPModel folder


def write_pickscore(folder: Path, seed: int = 1) -> Path:
    """A tiny CLIPModel, its tokenizer and its (PIL) image processor: PickScore_v1's layout."""
    from transformers import CLIPImageProcessorPil

    tiny_clip(seed).save_pretrained(folder)
    tiny_tokenizer(folder)
    side = {"height": 32, "width": 32}
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=side).save_pretrained(folder)
    return folder


@torch.no_grad()
def pickscore_reference(folder: Path, images: list, prompt: str) -> torch.Tensor:
    """PickScore's model card: processor -> features -> unit -> logit_scale.exp() * text @ image."""
    from transformers import AutoModel, CLIPImageProcessorPil, CLIPTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    proc, tok = CLIPImageProcessorPil.from_pretrained(folder), CLIPTokenizer.from_pretrained(folder)
    image_inputs = proc(images=images, return_tensors="pt")
    text_inputs = tok(prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
    image_embs = model.get_image_features(**image_inputs).pooler_output
    image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
    text_embs = model.get_text_features(**text_inputs).pooler_output
    text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
    return (model.logit_scale.exp() * (text_embs @ image_embs.T))[0]


# ------------------------------------------------------------------ HPS v2.1: open_clip ViT layout

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 24, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 514, "width": 32, "heads": 4, "layers": 2},
}


def _block(prefix: str, width: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    def r(*shape: int, s: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * s

    return {
        f"{prefix}ln_1.weight": 1 + r(width), f"{prefix}ln_1.bias": r(width),
        f"{prefix}attn.in_proj_weight": r(3 * width, width, s=0.2),
        f"{prefix}attn.in_proj_bias": r(3 * width),
        f"{prefix}attn.out_proj.weight": r(width, width, s=0.2),
        f"{prefix}attn.out_proj.bias": r(width),
        f"{prefix}ln_2.weight": 1 + r(width), f"{prefix}ln_2.bias": r(width),
        f"{prefix}mlp.c_fc.weight": r(4 * width, width, s=0.2),
        f"{prefix}mlp.c_fc.bias": r(4 * width),
        f"{prefix}mlp.c_proj.weight": r(width, 4 * width, s=0.2),
        f"{prefix}mlp.c_proj.bias": r(width),
    }  # fmt: skip


def open_clip_state(cfg: dict = TINY_OPEN_CLIP, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under open_clip's CLIP keys (VisionTransformer + text transformer)."""
    g = torch.Generator().manual_seed(seed)
    v, t, d = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]
    vw, tw, grid = v["width"], t["width"], v["image_size"] // v["patch_size"]
    sd = {
        "visual.class_embedding": torch.randn(vw, generator=g) * 0.1,
        "visual.positional_embedding": torch.randn(grid * grid + 1, vw, generator=g) * 0.1,
        "visual.conv1.weight": torch.randn(vw, 3, v["patch_size"], v["patch_size"], generator=g)
        * 0.05,
        "visual.ln_pre.weight": torch.ones(vw), "visual.ln_pre.bias": torch.zeros(vw),
        "visual.ln_post.weight": torch.ones(vw), "visual.ln_post.bias": torch.zeros(vw),
        "visual.proj": torch.randn(vw, d, generator=g) * 0.2,
        "token_embedding.weight": torch.randn(t["vocab_size"], tw, generator=g) * 0.1,
        "positional_embedding": torch.randn(t["context_length"], tw, generator=g) * 0.05,
        "ln_final.weight": torch.ones(tw), "ln_final.bias": torch.zeros(tw),
        "text_projection": torch.randn(tw, d, generator=g) * 0.2,
        "logit_scale": torch.tensor(4.6052),
    }  # fmt: skip
    for i in range(v["layers"]):
        sd.update(_block(f"visual.transformer.resblocks.{i}.", vw, g))
    for i in range(t["layers"]):
        sd.update(_block(f"transformer.resblocks.{i}.", tw, g))
    return sd


def write_hps(folder: Path, seed: int = 0) -> Path:
    """``HPS_v2.1_compressed.pt``'s layout ({"state_dict": open_clip keys}), open_clip's model
    config and the tokenizer beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": open_clip_state(seed=seed)}, folder / "HPS_v2.1_compressed.pt")
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP))
    tiny_tokenizer(folder)
    return folder / "HPS_v2.1_compressed.pt"


def _resblocks(x: torch.Tensor, sd: dict, prefix: str, n: int, heads: int, mask=None):
    """open_clip's Transformer: x (L, N, W); x += attn(ln_1 x); x += mlp(ln_2 x), GELU."""
    width = x.shape[-1]
    for i in range(n):
        p = f"{prefix}{i}."
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        attn, _ = F.multi_head_attention_forward(
            h, h, h, width, heads, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"],
            None, None, False, 0.0, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"],
            need_weights=False, attn_mask=mask,
        )  # fmt: skip
        x = x + attn
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return x


@torch.no_grad()
def hps_reference(sd: dict, pixels: torch.Tensor, text: torch.Tensor, cfg=TINY_OPEN_CLIP):
    """HPS v2's score.py on open_clip's CLIP: unit image and text features, their dot product.
    ``pixels`` (N, 3, S, S) normalised; ``text`` (1, L) ids padded with 0."""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    vw = v["width"]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=v["patch_size"])  # (N, W, g, g)
    x = x.reshape(x.shape[0], vw, -1).permute(0, 2, 1)  # (N, g*g, W)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, vw)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, (vw,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = _resblocks(x.permute(1, 0, 2), sd, "visual.transformer.resblocks.", v["layers"],
                   vw // v["head_width"]).permute(1, 0, 2)  # fmt: skip
    x = F.layer_norm(x, (vw,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    image = x[:, 0] @ sd["visual.proj"]  # (N, D)
    tw, length = t["width"], text.shape[1]
    y = sd["token_embedding.weight"][text] + sd["positional_embedding"][:length]  # (1, L, W)
    causal = torch.full((length, length), float("-inf")).triu(1)
    y = _resblocks(y.permute(1, 0, 2), sd, "transformer.resblocks.", t["layers"], t["heads"],
                   causal).permute(1, 0, 2)  # fmt: skip
    y = F.layer_norm(y, (tw,), sd["ln_final.weight"], sd["ln_final.bias"])
    txt = y[torch.arange(y.shape[0]), text.argmax(dim=-1)] @ sd["text_projection"]  # (1, D)
    image, txt = F.normalize(image, dim=-1), F.normalize(txt, dim=-1)
    return torch.diagonal(image @ txt.T.expand(-1, image.shape[0]))  # (N,)


# ------------------------------------------------------------------ LAION aesthetic predictor


def write_aesthetic(folder: Path, width: int = 32, seed: int = 0) -> Path:
    """``sac+logos+ava1-l14-linearMSE.pth``'s layout: the MLP's state dict, ``layers.{0,2,4,6,7}``."""
    g = torch.Generator().manual_seed(seed)
    shapes = {0: (1024, width), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}
    sd = {}
    for i, (o, n) in shapes.items():
        sd[f"layers.{i}.weight"] = torch.randn(o, n, generator=g) / n**0.5
        sd[f"layers.{i}.bias"] = torch.randn(o, generator=g) * 0.1
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "sac+logos+ava1-l14-linearMSE.pth")
    return folder / "sac+logos+ava1-l14-linearMSE.pth"


@torch.no_grad()
def aesthetic_reference(pth: Path, clip_folder: Path, images: list) -> torch.Tensor:
    """simple_inference.py: CLIP image features, L2-normalised, through the MLP's five linears."""
    from transformers import CLIPImageProcessorPil, CLIPModel

    model = CLIPModel.from_pretrained(clip_folder).eval()
    pixels = CLIPImageProcessorPil.from_pretrained(clip_folder)(images=images, return_tensors="pt")
    emb = model.get_image_features(**pixels).pooler_output
    x = emb / emb.norm(dim=-1, keepdim=True)
    sd = torch.load(pth, weights_only=True)
    for i in (0, 2, 4, 6, 7):  # Dropout between them is the identity at inference
        x = F.linear(x, sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"])
    return x.squeeze(-1)
