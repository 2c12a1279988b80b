"""Tiny random-weight models for the evaluation tests, built in code and saved as local files:
an ImageNet-style classifier (real class names, 10 classes) and LPIPS weight files."""

from __future__ import annotations

from pathlib import Path

import torch

# Ten real ImageNet-1k labels (as in the id2label of transformers' ImageNet classifiers).
IMAGENET_LABELS = [
    "goldfish, Carassius auratus",
    "golden retriever",
    "tabby, tabby cat",
    "balloon",
    "basketball",
    "sports car, sport car",
    "strawberry",
    "banana",
    "volcano",
    "daisy",
]


def _labels() -> tuple[dict[int, str], dict[str, int]]:
    id2label = dict(enumerate(IMAGENET_LABELS))
    return id2label, {v: k for k, v in id2label.items()}


def tiny_resnet_classifier(folder: Path, seed: int = 0) -> Path:
    """A tiny ResNet image classifier with an EfficientNet-like preprocessor config."""
    import json

    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    id2label, label2id = _labels()
    cfg = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=len(id2label),
        id2label=id2label,
        label2id=label2id,
    )
    ResNetForImageClassification(cfg).eval().save_pretrained(folder)
    proc = {
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    return folder


def tiny_efficientnet_classifier(folder: Path, seed: int = 0) -> Path:
    """A tiny EfficientNet (the paper's classifier family) with its own processor config
    (``include_top``: normalised twice by std, as google/efficientnet-* are)."""
    from transformers import EfficientNetConfig, EfficientNetForImageClassification
    from transformers.models.efficientnet.image_processing_pil_efficientnet import (
        EfficientNetImageProcessorPil,
    )

    torch.manual_seed(seed)
    id2label, label2id = _labels()
    cfg = EfficientNetConfig(
        image_size=32,
        width_coefficient=0.25,
        depth_coefficient=0.25,
        hidden_dim=320,
        num_labels=len(id2label),
        id2label=id2label,
        label2id=label2id,
        dropout_rate=0.0,
        drop_connect_rate=0.0,
    )
    model = EfficientNetForImageClassification(cfg).eval()
    with torch.no_grad():  # the default init (BN weights ~0.02) makes every logit 0
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.fill_(1.0)
            elif isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight)
    model.save_pretrained(folder)
    EfficientNetImageProcessorPil(
        size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.47853944, 0.4732864, 0.47434163],
    ).save_pretrained(folder)
    return folder


def lpips_weight_files(folder: Path, net: str = "alex", seed: int = 0) -> tuple[Path, Path]:
    """Random LPIPS weights saved in the published files' layouts (torchvision trunk keys
    ``features.N.*``; lpips ``linK.model.1.weight``)."""
    from blendedit.frame.metrics import LPIPS

    torch.manual_seed(seed)
    model = LPIPS(net)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    trunk = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    lins = {
        f"lin{i}.model.1.weight": torch.rand_like(lin.weight) for i, lin in enumerate(model.lins)
    }
    torch.save(trunk, folder / f"{net}-trunk.pth")
    torch.save(lins, folder / f"{net}-lin.pth")
    return folder / f"{net}-trunk.pth", folder / f"{net}-lin.pth"
