"""PIE-Bench's structure distance on a tiny random-weight transformers ViT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTModel

from blendedit.errors import InputError
from blendedit.eval.structure import StructureDistance, cosine_self_similarity, resize_short


@pytest.fixture(scope="module")
def tiny() -> StructureDistance:
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, image_size=224, patch_size=32)  # fmt: skip
    return StructureDistance(ViTModel(cfg, add_pooling_layer=False))


def _keys_by_hand(sd: StructureDistance, images: torch.Tensor) -> torch.Tensor:
    """The last layer's keys from its input hidden state (the model's own outputs)."""
    with torch.no_grad():
        x = sd.prepare(images)
        out = sd.model(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
        layer = (sd.model.layers if hasattr(sd.model, "layers") else sd.model.encoder.layer)[-1]
        h = layer.layernorm_before(out.hidden_states[-2])  # (B, T, D)
        attn = layer.attention
        proj = attn.k_proj if hasattr(attn, "k_proj") else attn.attention.key
        return proj(h)


def test_self_similarity_is_the_last_layers_keys(tiny) -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 256, 320, generator=g) * 255  # (B, 3, H, W) in 0..255
    got = tiny.self_similarity(images)
    keys = _keys_by_hand(tiny, images)
    assert got.shape == (2, 1 + 7 * 8, 1 + 7 * 8)  # 224x280 in 32-px patches, plus CLS
    want = F.cosine_similarity(keys[:, :, None], keys[:, None, :], dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    first = tiny.model.layers[0].attention.k_proj  # not the first layer's keys
    seen: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda m, i, o: seen.append(o))
    tiny.self_similarity(images)
    hook.remove()
    assert not torch.allclose(cosine_self_similarity(seen[0]), want, atol=1e-3)


def test_distance_is_zero_for_the_source_and_grows_with_change(tiny) -> None:
    g = torch.Generator().manual_seed(2)
    src = torch.rand(1, 3, 224, 224, generator=g) * 255
    assert float(tiny(src, src)[0]) == 0.0
    near = float(tiny((src + 5).clamp(0, 255), src)[0])
    far = float(tiny(torch.rand(1, 3, 224, 224, generator=g) * 255, src)[0])
    assert 0 < near < far
    with pytest.raises(InputError, match="result: shape"):
        tiny(src[..., :200], src)


def test_resize_is_torchvisions_rule() -> None:
    assert resize_short(torch.zeros(1, 3, 512, 512)).shape[-2:] == (224, 224)
    assert resize_short(torch.zeros(1, 3, 300, 600)).shape[-2:] == (224, 448)
    assert resize_short(torch.zeros(1, 3, 200, 800)).shape[-2:] == (120, 480)
