"""Loading an editor by method name and placing it on a device (``blendedit.methods``)."""

from __future__ import annotations

import pytest
import torch

from blendedit.errors import InputError
from blendedit.methods import load_editor, place


def test_a_model_too_large_for_the_device_is_one_line():
    """``place``: an out-of-memory placement names the weights' size and what to try; the pixel
    method (one model, no offload) is told only what it can use."""

    def oom(device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    class Backbone:  # 2 GiB of float32 weights, on the meta device
        def modules(self):
            with torch.device("meta"):
                return {"transformer": torch.nn.Linear(2**15, 2**14, bias=False)}

    class Latent:
        family = "sd3"
        backbone = Backbone()
        to = staticmethod(oom)

    class Pixel:  # 0.5 GiB of float16 weights
        model = torch.nn.Linear(2**14, 2**14, bias=False, device="meta", dtype=torch.float16)
        to = staticmethod(oom)

    with pytest.raises(InputError) as e:
        place(Latent(), "cuda", torch.float32, None)
    assert str(e.value) == (
        "device: the model's weights (2.0 GiB in float32) do not fit on cuda; try --offload "
        "model or --offload sequential or --no-t5 or --dtype fp16"
    )
    with pytest.raises(InputError) as e:
        place(Pixel(), "cuda", torch.float16, None)
    assert str(e.value) == "device: the model's weights (0.5 GiB in float16) do not fit on cuda"


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            {"vae": "madebyollin/sdxl-vae-fp16-fix"},
            "vae: applies to --method latent only, not pixel",
        ),
        ({"loras": ["style.safetensors"]}, "lora: applies to --method latent only, not pixel"),
        ({"model": None}, "model: --method pixel needs --model with the ADM checkpoint file"),
    ],
)
def test_the_pixel_method_refuses_what_it_cannot_use_before_loading(flags, line):
    said: list[str] = []
    with pytest.raises(InputError, match=line):
        load_editor("pixel", **{"model": "adm.pt", **flags}, say=said.append)
    assert said == []  # nothing was announced, nothing loaded
