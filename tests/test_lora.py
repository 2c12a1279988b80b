"""LoRA adapters on tiny random SD and SDXL components: LoRA files made here with PEFT (diffusers
and kohya/A1111 key formats), outputs checked against the PEFT model each file was made from, and
removal checked to give back the very same modules and tensors."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from blendedit.errors import BlendEditError, InputError, ModelNotFoundError
from blendedit.latent.lora import (
    LoraSpec,
    apply_loras,
    parse_lora_spec,
    remove_loras,
    resolve_lora_file,
)
from tiny_models import tiny_text_config, tiny_text_encoder, tiny_unet

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1"]  # attention Linear + resnet Conv2d
TE_TARGETS = ["q_proj", "v_proj"]


def _with_lora(model, targets, *, r=4, alpha=4, seed=1, b_scale=1.0, old_keys=False):
    """A copy of ``model`` with a random PEFT LoRA (non-zero B, scaled by ``b_scale``) and its
    LoRA weights: PEFT keys (``lora_A``/``lora_B``), or with ``old_keys`` diffusers' older names
    (``to_q.lora.down``, ``q_proj.lora_linear_layer.down``; attention layers only)."""
    ref = copy.deepcopy(model)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(seed)
    inject_adapter_in_model(config, ref)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "lora_B" in name:
                p.mul_(b_scale)
    layers = get_peft_model_state_dict(ref)
    if old_keys:
        layers = convert_state_dict_to_diffusers(layers)
    return ref.eval(), layers, config.to_dict()


def _unet_out(unet, x, t, c, **kw) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, t, c, **kw).sample


def _te_out(te, ids) -> torch.Tensor:
    with torch.no_grad():
        return te(ids).last_hidden_state


def _snapshot(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        dict(model.named_modules()),
    )


def _assert_restored(model, snap) -> None:
    tensors, modules = snap
    now = model.state_dict()
    assert set(now) == set(tensors)
    assert all(torch.equal(now[k], v) for k, v in tensors.items())
    now_modules = dict(model.named_modules())
    assert set(now_modules) == set(modules)
    assert all(now_modules[k] is m for k, m in modules.items())  # the same objects, not copies


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("lora: "), msg
    return msg


@pytest.fixture(scope="module")
def sd():
    """Tiny SD UNet + text encoder, inputs, and a diffusers-format LoRA made from them."""
    unet, te = tiny_unet(), tiny_text_encoder()
    torch.manual_seed(0)
    x, t, c = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 7, 32)
    ids = torch.randint(0, 500, (1, 7))
    return unet, te, (x, t, c), ids


def _save_sd_lora(tmp: Path, unet, te, *, seed=1, alpha=4, b_scale=1.0, with_te=True):
    ref_u, u_layers, u_meta = _with_lora(
        unet, UNET_TARGETS, seed=seed, alpha=alpha, b_scale=b_scale
    )
    ref_t, t_layers, t_meta = _with_lora(
        te, TE_TARGETS, seed=seed + 100, alpha=alpha, old_keys=True
    )
    folder = tmp / f"lora{seed}"
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        folder,
        unet_lora_layers=u_layers,
        text_encoder_lora_layers=t_layers if with_te else None,
        unet_lora_adapter_metadata=u_meta,
        text_encoder_lora_adapter_metadata=t_meta if with_te else None,
    )
    return folder, ref_u, ref_t


def test_parse_lora_spec(tmp_path: Path) -> None:
    assert parse_lora_spec("a/b.safetensors") == LoraSpec("a/b.safetensors", 1.0)
    assert parse_lora_spec("owner/name") == LoraSpec("owner/name", 1.0)
    assert parse_lora_spec(" owner/name:0.7 ") == LoraSpec("owner/name", 0.7)
    assert parse_lora_spec("x.safetensors:-1.5") == LoraSpec("x.safetensors", -1.5)
    odd = tmp_path / "with:colon:2.safetensors"  # an existing path is taken whole
    odd.write_bytes(b"")
    assert parse_lora_spec(str(odd)) == LoraSpec(str(odd), 1.0)
    assert parse_lora_spec(f"{odd}:0.25") == LoraSpec(str(odd), 0.25)
    for bad, word in [
        ("x.safetensors:abc", "'abc'"),
        ("x:nan", "'nan'"),
        ("", "empty"),
        (":1", ""),
    ]:
        with pytest.raises(InputError) as e:
            parse_lora_spec(bad)
        assert word in _one_line(e)


def test_diffusers_format_matches_peft_reference_and_removes_bit_identically(sd, tmp_path) -> None:
    unet, te, (x, t, c), ids = sd
    # alpha != r: the scaling alpha/r comes from the LoRA config stored in the file's header
    folder, ref_u, ref_t = _save_sd_lora(tmp_path, unet, te, alpha=8)
    snap_u, snap_t = _snapshot(unet), _snapshot(te)
    base_u, base_t = _unet_out(unet, x, t, c), _te_out(te, ids)

    handle = apply_loras(unet, [te], [str(folder)], local_files_only=True)
    assert handle.files == [folder / "pytorch_lora_weights.safetensors"]
    out_u, out_t = _unet_out(unet, x, t, c), _te_out(te, ids)
    assert (out_u - base_u).abs().max() > 1e-3 and (out_t - base_t).abs().max() > 1e-3
    torch.testing.assert_close(out_u, _unet_out(ref_u, x, t, c), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_t, _te_out(ref_t, ids), rtol=1e-5, atol=1e-5)

    handle.set_scales([0.0])  # scale 0: exactly the base model
    assert torch.equal(_unet_out(unet, x, t, c), base_u)
    assert torch.equal(_te_out(te, ids), base_t)

    remove_loras(handle)
    remove_loras(handle)  # idempotent
    assert not handle.active
    _assert_restored(unet, snap_u)
    _assert_restored(te, snap_t)
    assert torch.equal(_unet_out(unet, x, t, c), base_u)
    assert torch.equal(_te_out(te, ids), base_t)


def test_scale_is_linear_for_a_small_lora_and_two_loras_stack(sd, tmp_path) -> None:
    unet, te, (x, t, c), _ = sd
    f1, _, _ = _save_sd_lora(tmp_path, unet, te, seed=1, b_scale=0.02, with_te=False)
    f2, _, _ = _save_sd_lora(tmp_path, unet, te, seed=2, b_scale=0.02, with_te=False)
    snap = _snapshot(unet)
    base = _unet_out(unet, x, t, c)

    h = apply_loras(unet, [te], [LoraSpec(str(f1), 0.5)], local_files_only=True)
    d_half = _unet_out(unet, x, t, c) - base
    h.set_scales([1.0])
    d_one = _unet_out(unet, x, t, c) - base
    h.remove()
    assert d_half.abs().max() > 1e-4
    torch.testing.assert_close(d_one, 2 * d_half, rtol=0.05, atol=0.05 * d_one.abs().max().item())

    h = apply_loras(unet, [te], [f"{f2}:1"], local_files_only=True)
    d_two = _unet_out(unet, x, t, c) - base
    h.remove()
    h = apply_loras(unet, [te], [f"{f1}:1", f"{f2}:1"], local_files_only=True)
    assert h.adapter_names[0] != h.adapter_names[1]
    d_both = _unet_out(unet, x, t, c) - base
    assert (d_both - d_one).abs().max() > 1e-4
    torch.testing.assert_close(
        d_both, d_one + d_two, rtol=0.05, atol=0.05 * d_both.abs().max().item()
    )
    h.set_scales([1.0, 0.0])  # the second switched off: the first alone
    torch.testing.assert_close(_unet_out(unet, x, t, c) - base, d_one, rtol=1e-6, atol=1e-6)
    h.remove()
    _assert_restored(unet, snap)


def _save_kohya(path: Path, parts) -> None:
    """kohya/A1111 keys (``<prefix>_<module_with_underscores>.lora_down/lora_up/alpha``) for the
    ``default`` LoRA of each (prefix, PEFT reference model, module-name map)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, ref, rename in parts:
        for name, module in ref.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                key = f"{prefix}_{rename(name).replace('.', '_')}"
                out[f"{key}.lora_down.weight"] = module.lora_A["default"].weight.detach().clone()
                out[f"{key}.lora_up.weight"] = module.lora_B["default"].weight.detach().clone()
                out[f"{key}.alpha"] = torch.tensor(float(ref.peft_config["default"].lora_alpha))
    save_file(out, str(path))


def test_kohya_format_matches_peft_reference(sd, tmp_path) -> None:
    """The same LoRA written with kohya/A1111 keys (lora_down/lora_up/alpha, lora_unet_/lora_te_)
    gives the PEFT reference's outputs; alpha/r = 2/4 halves the update."""
    unet, te, (x, t, c), ids = sd
    ref_u, _, _ = _with_lora(unet, ["to_q", "to_v"], alpha=2, seed=3)
    ref_t, _, _ = _with_lora(te, ["q_proj", "out_proj"], alpha=2, seed=4)
    # transformers 5 flattens CLIPTextModel; kohya files still name the text_model.* layers
    te_prefix = "lora_te" if hasattr(te, "text_model") else "lora_te_text_model"
    path = tmp_path / "kohya_style.safetensors"
    _save_kohya(path, [("lora_unet", ref_u, str), (te_prefix, ref_t, str)])
    snap_u, snap_t = _snapshot(unet), _snapshot(te)

    h = apply_loras(unet, [te], [str(path)], local_files_only=True)
    torch.testing.assert_close(_unet_out(unet, x, t, c), _unet_out(ref_u, x, t, c))
    torch.testing.assert_close(_te_out(te, ids), _te_out(ref_t, ids))
    h.remove()
    _assert_restored(unet, snap_u)
    _assert_restored(te, snap_t)


def test_pickled_lora_is_read_weights_only(sd, tmp_path) -> None:
    unet, te, (x, t, c), _ = sd
    ref_u, layers, _ = _with_lora(unet, ["to_k"], seed=5, old_keys=True)
    path = tmp_path / "lora.bin"
    torch.save({f"unet.{k}": v for k, v in layers.items()}, path)
    h = apply_loras(unet, [te], [str(path)], local_files_only=True)
    torch.testing.assert_close(_unet_out(unet, x, t, c), _unet_out(ref_u, x, t, c))
    h.remove()

    evil = tmp_path / "evil.pt"
    torch.save({"x": Path("x")}, evil)  # objects beyond tensors need a full unpickler: refused
    with pytest.raises(InputError) as e:
        apply_loras(unet, [te], [str(evil)], local_files_only=True)
    assert "evil.pt" in _one_line(e)


def test_hub_id_from_the_cache_offline(sd, tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    unet, te, (x, t, c), _ = sd
    folder, _, _ = _save_sd_lora(tmp_path, unet, te, seed=6)
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--tiny-lora"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    data = (folder / "pytorch_lora_weights.safetensors").read_bytes()
    (snapshot / "pytorch_lora_weights.safetensors").write_bytes(data)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))

    assert resolve_lora_file("someone/tiny-lora", local_files_only=True).read_bytes() == data
    named = "someone/tiny-lora/pytorch_lora_weights.safetensors"
    assert resolve_lora_file(named, local_files_only=True).read_bytes() == data

    h = apply_loras(unet, [te], ["someone/tiny-lora:0.5"], local_files_only=True)
    from_hub = _unet_out(unet, x, t, c)
    h.remove()
    h = apply_loras(unet, [te], [f"{folder}:0.5"], local_files_only=True)
    assert torch.equal(_unet_out(unet, x, t, c), from_hub)
    h.remove()

    with pytest.raises(ModelNotFoundError) as e:
        apply_loras(unet, [te], ["someone/not-cached"], local_files_only=True)
    assert "'someone/not-cached'" in _one_line(e) and "hf download" in str(e.value)


def test_bad_loras_are_one_line_and_leave_the_model_untouched(sd, tmp_path) -> None:
    unet, te, _, _ = sd
    snap_u, snap_t = _snapshot(unet), _snapshot(te)
    good, _, _ = _save_sd_lora(tmp_path, unet, te, seed=7)

    missing = tmp_path / "nope.safetensors"
    with pytest.raises(InputError) as e:
        apply_loras(unet, [te], [str(missing)], local_files_only=True)
    assert "nope.safetensors" in _one_line(e)

    not_lora = tmp_path / "model.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2)}, str(not_lora))
    with pytest.raises(InputError) as e:
        apply_loras(unet, [te], [str(not_lora)], local_files_only=True)
    assert "model.safetensors" in _one_line(e) and "not a LoRA" in str(e.value)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors at all")
    with pytest.raises(InputError) as e:
        apply_loras(unet, [te], [str(garbage)], local_files_only=True)
    assert "garbage.safetensors" in _one_line(e)

    # another architecture: a LoRA made on a UNet with wider cross-attention (like SD 2.x vs 1.x)
    wide = tiny_unet()
    wide = UNet2DConditionModel.from_config({**wide.config, "cross_attention_dim": 48}).eval()
    _, w_layers, w_meta = _with_lora(wide, ["to_k", "to_v"], seed=8)
    other = tmp_path / "other_arch"
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        other, unet_lora_layers=w_layers, unet_lora_adapter_metadata=w_meta
    )
    # loaded after a good one, so the failure must also take the good one off again
    with pytest.raises(InputError) as e:
        apply_loras(unet, [te], [str(good), str(other)], local_files_only=True)
    assert "other_arch" in _one_line(e) and "another architecture" in str(e.value)

    # weights for modules this UNet does not have
    _, l_layers, _ = _with_lora(unet, ["to_q"], seed=9)
    stray = {f"unet.{k}": v for k, v in l_layers.items()}
    stray.update(
        {f"unet.mid_block.nonexistent.to_q.lora_{n}.weight": torch.ones(4, 4) for n in "AB"}
    )
    stray_path = tmp_path / "stray.safetensors"
    save_file(stray, str(stray_path))
    with pytest.raises(InputError) as e:
        apply_loras(unet, [te], [str(stray_path)], local_files_only=True)
    assert "stray.safetensors" in _one_line(e)

    with pytest.raises(InputError) as e:
        apply_loras(unet, [te], [f"{good}:big"], local_files_only=True)
    assert "'big'" in _one_line(e)

    _assert_restored(unet, snap_u)
    _assert_restored(te, snap_t)

    h = apply_loras(unet, [te], [str(good)], local_files_only=True)
    with pytest.raises(BlendEditError) as e:
        apply_loras(unet, [te], [str(good)], local_files_only=True)  # LoRA layers already there
    _one_line(e)
    h.remove()
    _assert_restored(unet, snap_u)


# --- SDXL ----------------------------------------------------------------------------------------


def _tiny_sdxl():
    """diffusers' tiny SDXL test shapes (two CLIPs of width 32, text_time embedding, 6 time ids),
    one layer per block to stay fast."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,  # 32 + 32
    ).eval()
    te1 = CLIPTextModel(tiny_text_config()).eval()
    te2 = CLIPTextModelWithProjection(tiny_text_config()).eval()
    return unet, te1, te2


def test_sdxl_lora_on_unet_and_text_encoder_2(tmp_path) -> None:
    unet, te1, te2 = _tiny_sdxl()
    torch.manual_seed(0)
    x, t, c = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 7, 64)
    cond = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    ids = torch.randint(0, 500, (1, 7))
    ref_u, u_layers, u_meta = _with_lora(
        unet, ["to_q", "to_k", "to_v", "to_out.0"], seed=11, old_keys=True
    )
    ref_t2, t2_layers, t2_meta = _with_lora(te2, TE_TARGETS, seed=12)
    folder = tmp_path / "sdxl_lora"
    StableDiffusionXLLoraLoaderMixin.save_lora_weights(
        folder,
        unet_lora_layers=u_layers,
        text_encoder_2_lora_layers=t2_layers,
        unet_lora_adapter_metadata=u_meta,
        text_encoder_2_lora_adapter_metadata=t2_meta,
    )
    snaps = [_snapshot(m) for m in (unet, te1, te2)]
    base_u = _unet_out(unet, x, t, c, added_cond_kwargs=cond)
    base_t1 = _te_out(te1, ids)

    h = apply_loras(unet, [te1, te2], [str(folder)], local_files_only=True)
    out_u = _unet_out(unet, x, t, c, added_cond_kwargs=cond)
    assert (out_u - base_u).abs().max() > 1e-3
    torch.testing.assert_close(out_u, _unet_out(ref_u, x, t, c, added_cond_kwargs=cond))
    with torch.no_grad():
        got, want = te2(ids), ref_t2(ids)
    torch.testing.assert_close(got.text_embeds, want.text_embeds)  # the pooled projection too
    assert torch.equal(_te_out(te1, ids), base_t1)  # no text_encoder weights: untouched
    h.remove()
    for model, snap in zip((unet, te1, te2), snaps, strict=True):
        _assert_restored(model, snap)

    # kohya SDXL keys name the UNet's layers by SGM blocks (input_blocks.3.1 = down_blocks.1
    # .attentions.0 with one layer per block) and the second encoder lora_te2_
    def sgm(name: str) -> str:
        name = name.replace("down_blocks.1.attentions.0", "input_blocks.3.1")
        name = name.replace("mid_block.attentions.0", "middle_block.1")
        return re.sub(r"up_blocks\.0\.attentions\.(\d)", r"output_blocks.\1.1", name)

    ref_u, _, _ = _with_lora(unet, ["to_q", "to_out.0"], alpha=2, seed=13)
    ref_t2, _, _ = _with_lora(te2, ["q_proj", "out_proj"], alpha=2, seed=14)
    kohya = tmp_path / "sdxl_kohya.safetensors"
    _save_kohya(kohya, [("lora_unet", ref_u, sgm), ("lora_te2", ref_t2, str)])
    h = apply_loras(unet, [te1, te2], [str(kohya)], local_files_only=True)
    out_u = _unet_out(unet, x, t, c, added_cond_kwargs=cond)
    assert (out_u - base_u).abs().max() > 1e-3
    torch.testing.assert_close(out_u, _unet_out(ref_u, x, t, c, added_cond_kwargs=cond))
    torch.testing.assert_close(_te_out(te2, ids), _te_out(ref_t2, ids))
    h.remove()
    for model, snap in zip((unet, te1, te2), snaps, strict=True):
        _assert_restored(model, snap)

    # the SDXL LoRA on an SD-shaped pair (one text encoder): refused in one line, nothing kept
    with pytest.raises(InputError) as e:
        apply_loras(unet, [te1], [str(folder)], local_files_only=True)
    assert "sdxl_lora" in _one_line(e) and "text_encoder_2" in str(e.value)
    _assert_restored(unet, snaps[0])
