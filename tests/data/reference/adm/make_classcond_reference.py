"""Make the class-conditional ADM reference data with guided-diffusion's own code (not ours).

Usage: python make_classcond_reference.py GUIDED_DIFFUSION_DIR OUT_DIR

GUIDED_DIFFUSION_DIR holds the ``guided_diffusion`` package of ``openai/guided-diffusion`` (commit
22e0df8183507e13a7813f8d38d51b072ca1e67c, unmodified); it is imported, never copied here. Writes:

* ``adm512_cond_state_dict_shapes.json``: every state-dict key and shape of the 512x512
  class-conditional model, built on the meta device from the MODEL_FLAGS of guided-diffusion's
  README, parsed the way its sampling scripts parse them.
* ``tiny_adm_classcond_config.json``, ``tiny_adm_classcond.safetensors`` (float16 weights) and
  ``tiny_adm_classcond_io.safetensors`` (inputs and guided-diffusion's outputs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

COMMIT = "22e0df8183507e13a7813f8d38d51b072ca1e67c"
SOURCE = f"openai/guided-diffusion@{COMMIT}"
# guided-diffusion README, "512x512 model" (class-conditional ImageNet).
README_512_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512"
    " --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64"
    " --num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True"
)
TINY = {
    "image_size": 32,
    "num_channels": 32,
    "num_res_blocks": 1,
    "num_heads": 4,
    "num_head_channels": 16,
    "num_heads_upsample": -1,
    "attention_resolutions": "16",
    "channel_mult": "1,1",
    "dropout": 0.0,
    "class_cond": True,
    "learn_sigma": True,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "use_fp16": False,
    "use_new_attention_order": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "10",
    "rescale_timesteps": True,
    "predict_xstart": False,
    "rescale_learned_sigmas": False,
    "use_kl": False,
}


def attention_heads(model: torch.nn.Module, attention_cls: type) -> dict[str, dict[str, int]]:
    return {
        name: {"channels": m.norm.num_channels, "num_heads": m.num_heads}
        for name, m in model.named_modules()
        if isinstance(m, attention_cls)
    }


def adm512(gd: dict, out: Path) -> None:
    su, unet = gd["script_util"], gd["unet"]
    parser = argparse.ArgumentParser()
    su.add_dict_to_argparser(parser, su.model_and_diffusion_defaults())
    args = parser.parse_args(README_512_FLAGS.split())
    kwargs = su.args_to_dict(args, su.model_and_diffusion_defaults().keys())
    with torch.device("meta"):
        model, _ = su.create_model_and_diffusion(**kwargs)
    sd = model.state_dict()
    data = {
        "source": SOURCE,
        "flags": README_512_FLAGS,
        "config": kwargs,
        "resolved": {
            "channel_mult": list(model.channel_mult),
            "attention_downsample_factors": sorted(model.attention_resolutions),
            "num_classes": model.num_classes,
            "out_channels": model.out_channels,
            "attention_blocks": attention_heads(model, unet.AttentionBlock),
        },
        "num_keys": len(sd),
        "total_params": sum(p.numel() for p in model.parameters()),
        "state_dict_shapes": {k: list(v.shape) for k, v in sd.items()},
    }
    (out / "adm512_cond_state_dict_shapes.json").write_text(json.dumps(data, indent=1) + "\n")


def tiny(gd: dict, out: Path) -> None:
    su, unet = gd["script_util"], gd["unet"]
    model, diffusion = su.create_model_and_diffusion(**TINY)
    model.eval()
    sd = model.state_dict()
    torch.manual_seed(0)
    weights = {k: (torch.randn(v.shape) * 0.05).half() for k, v in sd.items()}
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(
        lambda _m, a, kw: seen.append(a[1].detach().clone()), with_kwargs=True
    )
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([3, 7])
    y = torch.tensor([207, 951])  # two ImageNet classes
    y_swapped = y.flip(0)
    with torch.no_grad():
        wrapped = diffusion._wrap_model(model)
        out_y = wrapped(x, t, y=y)
        out_swapped = wrapped(x, t, y=y_swapped)
        pmv = diffusion.p_mean_variance(model, x, t, clip_denoised=False, model_kwargs={"y": y})
    io = {
        "x": x,
        "t": t,
        "y": y,
        "y_swapped": y_swapped,
        "unet_timesteps": seen[0].float(),
        "model_output": out_y,
        "model_output_y_swapped": out_swapped,
        "mean": pmv["mean"],
        "variance": pmv["variance"],
        "log_variance": pmv["log_variance"],
        "pred_xstart": pmv["pred_xstart"],
    }
    meta = {"info": json.dumps({"source": SOURCE})}
    save_file(weights, str(out / "tiny_adm_classcond.safetensors"), metadata=meta)
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / "tiny_adm_classcond_io.safetensors"),
              metadata=meta)  # fmt: skip
    config = {
        "source": SOURCE,
        "create_model_and_diffusion_kwargs": TINY,
        "resolved": {
            "channel_mult": list(model.channel_mult),
            "attention_downsample_factors": sorted(model.attention_resolutions),
            "num_classes": model.num_classes,
            "out_channels": model.out_channels,
            "attention_blocks": attention_heads(model, unet.AttentionBlock),
            "timestep_map": [int(v) for v in diffusion.timestep_map],
        },
        "init": "torch.manual_seed(0); each tensor in key order: (randn(shape) * 0.05).half(); the"
        " model ran in float32 on those float16 values",
        "num_keys": len(sd),
        "total_params": sum(p.numel() for p in model.parameters()),
        "state_dict_keys_in_order": list(sd),
    }
    (out / "tiny_adm_classcond_config.json").write_text(json.dumps(config, indent=1) + "\n")


def main() -> None:
    gd_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    sys.path.insert(0, str(gd_dir))
    from guided_diffusion import script_util, unet

    gd = {"script_util": script_util, "unet": unet}
    out.mkdir(parents=True, exist_ok=True)
    adm512(gd, out)
    tiny(gd, out)


if __name__ == "__main__":
    main()
