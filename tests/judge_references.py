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


# ------------------------------------------------------------------ ImageReward: BLIP + BERT + MLP

TINY_MED = {"hidden_size": 32, "num_attention_heads": 4, "layer_norm_eps": 1e-12,
            "num_hidden_layers": 2, "intermediate_size": 48, "vocab_size": 141,
            "max_position_embeddings": 40, "pad_token_id": 0}  # fmt: skip
TINY_VIT = {"width": 128, "layers": 2, "patch": 8, "image": 32}  # heads = width / 64 = 2


def imagereward_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under ``ImageReward.pt``'s keys: blip.visual_encoder (BLIP's ViT),
    blip.text_encoder (med.py's BERT, cross-attention in every layer), blip.*_proj, mlp.layers."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, s: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * s

    vw, p, grid = TINY_VIT["width"], TINY_VIT["patch"], TINY_VIT["image"] // TINY_VIT["patch"]
    h, inter = TINY_MED["hidden_size"], TINY_MED["intermediate_size"]
    v = "blip.visual_encoder."
    sd = {v + "cls_token": r(1, 1, vw), v + "pos_embed": r(1, grid * grid + 1, vw),
          v + "patch_embed.proj.weight": r(vw, 3, p, p, s=0.05), v + "patch_embed.proj.bias": r(vw),
          v + "norm.weight": 1 + r(vw), v + "norm.bias": r(vw)}  # fmt: skip
    for i in range(TINY_VIT["layers"]):
        b = f"{v}blocks.{i}."
        for name, shape in (("norm1", (vw,)), ("norm2", (vw,))):
            sd[b + name + ".weight"], sd[b + name + ".bias"] = 1 + r(*shape), r(*shape)
        for name, o, n in (("attn.qkv", 3 * vw, vw), ("attn.proj", vw, vw),
                           ("mlp.fc1", 4 * vw, vw), ("mlp.fc2", vw, 4 * vw)):  # fmt: skip
            sd[b + name + ".weight"], sd[b + name + ".bias"] = r(o, n, s=n**-0.5), r(o)
    t = "blip.text_encoder."
    sd[t + "embeddings.word_embeddings.weight"] = r(TINY_MED["vocab_size"], h, s=0.5)
    sd[t + "embeddings.position_embeddings.weight"] = r(TINY_MED["max_position_embeddings"], h)
    sd[t + "embeddings.LayerNorm.weight"], sd[t + "embeddings.LayerNorm.bias"] = 1 + r(h), r(h)
    sd[t + "embeddings.position_ids"] = torch.arange(TINY_MED["max_position_embeddings"])[None]
    for i in range(TINY_MED["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        linears = [("attention.self.query", h, h), ("attention.self.key", h, h),
                   ("attention.self.value", h, h), ("attention.output.dense", h, h),
                   ("crossattention.self.query", h, h), ("crossattention.self.key", h, vw),
                   ("crossattention.self.value", h, vw), ("crossattention.output.dense", h, h),
                   ("intermediate.dense", inter, h), ("output.dense", h, inter)]  # fmt: skip
        for name, o, n in linears:
            sd[b + name + ".weight"], sd[b + name + ".bias"] = r(o, n, s=n**-0.5), r(o)
        for name in ("attention.output.LayerNorm", "crossattention.output.LayerNorm",
                     "output.LayerNorm"):  # fmt: skip
            sd[b + name + ".weight"], sd[b + name + ".bias"] = 1 + r(h), r(h)
    sd["blip.vision_proj.weight"], sd["blip.vision_proj.bias"] = r(256, vw), r(256)
    sd["blip.text_proj.weight"], sd["blip.text_proj.bias"] = r(256, h), r(256)
    for i, (o, n) in {0: (1024, h), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}.items():
        sd[f"mlp.layers.{i}.weight"], sd[f"mlp.layers.{i}.bias"] = r(o, n, s=n**-0.5), r(o)
    return sd


def write_imagereward(folder: Path, seed: int = 0) -> Path:
    """``ImageReward.pt`` (one state dict), BLIP's ``med_config.json`` and a BERT vocab beside it."""
    from blendedit.latent.backbones.common import write_bert_vocab

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(imagereward_state(seed), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(TINY_MED))
    write_bert_vocab(folder)
    return folder / "ImageReward.pt"


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], n, -1).transpose(1, 2)  # (B, n, L, d)


def _attend(q, k, v, heads, mask=None):
    """softmax(q k^T / sqrt(d) + mask) v over ``heads`` heads; (B, L, W) -> (B, L, W)."""
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    a = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        a = a + mask
    out = a.softmax(-1) @ v  # (B, n, L, d)
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


@torch.no_grad()
def imagereward_reference(sd, pixels, ids, attention_mask):
    """ImageReward.score: BLIP's ViT tokens (pre-norm timm blocks, final norm), med.py's BERT
    (post-norm; self-attention under the padding mask, cross-attention to every image token),
    the first token through the MLP, standardised. pixels (B, 3, S, S); ids, mask (1, L)."""
    v, heads = "blip.visual_encoder.", TINY_VIT["width"] // 64

    def lin(x, key):
        return F.linear(x, sd[key + ".weight"], sd[key + ".bias"])

    def ln(x, key, eps):
        return F.layer_norm(x, (x.shape[-1],), sd[key + ".weight"], sd[key + ".bias"], eps)

    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"],
                 stride=TINY_VIT["patch"]).flatten(2).transpose(1, 2)  # fmt: skip
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd[v + "pos_embed"]
    for i in range(TINY_VIT["layers"]):
        b = f"{v}blocks.{i}."
        q, k, val = lin(ln(x, b + "norm1", 1e-6), b + "attn.qkv").chunk(3, dim=-1)
        x = x + lin(_attend(q, k, val, heads), b + "attn.proj")
        x = x + lin(F.gelu(lin(ln(x, b + "norm2", 1e-6), b + "mlp.fc1")), b + "mlp.fc2")
    image = ln(x, v + "norm", 1e-6)  # (B, 1 + g*g, W)
    t, n, eps = "blip.text_encoder.", TINY_MED["num_attention_heads"], 1e-12
    bsz, length = image.shape[0], ids.shape[1]
    y = sd[t + "embeddings.word_embeddings.weight"][ids.expand(bsz, -1)]
    y = ln(y + sd[t + "embeddings.position_embeddings.weight"][:length], t + "embeddings.LayerNorm",
           eps)  # fmt: skip
    pad = (1.0 - attention_mask.float())[:, None, None, :] * -10000.0  # BERT's extended mask
    for i in range(TINY_MED["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        s = _attend(lin(y, b + "attention.self.query"), lin(y, b + "attention.self.key"),
                    lin(y, b + "attention.self.value"), n, pad)  # fmt: skip
        y = ln(lin(s, b + "attention.output.dense") + y, b + "attention.output.LayerNorm", eps)
        c = _attend(lin(y, b + "crossattention.self.query"),
                    lin(image, b + "crossattention.self.key"),
                    lin(image, b + "crossattention.self.value"), n)  # fmt: skip
        y = ln(lin(c, b + "crossattention.output.dense") + y,
               b + "crossattention.output.LayerNorm", eps)  # fmt: skip
        h = F.gelu(lin(y, b + "intermediate.dense"))
        y = ln(lin(h, b + "output.dense") + y, b + "output.LayerNorm", eps)
    z = y[:, 0]
    for i in (0, 2, 4, 6, 7):
        z = lin(z, f"mlp.layers.{i}")
    return (z.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072
