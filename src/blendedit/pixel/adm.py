"""OpenAI's ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis").

Our own implementation of the network of the guided-diffusion code base, written from the
conventions recorded in ``shared/reference/adm/README.md``. Its ``state_dict()`` keys, order and
shapes equal the original's, so the official checkpoints Blended Diffusion uses load strictly:
``256x256_diffusion_uncond.pt`` (unconditional) and ``512x512_diffusion.pt`` (class-conditional on
the 1000 ImageNet classes). Only the legacy qkv attention layout is supported. Paper references:
section 3 (architecture: depth, 64 channels per head, attention at 32, 16 and 8 pixels, BigGAN
up/down residual blocks), section 3.1 (adaptive group norm), section 4 (class conditioning: a
learned class embedding added to the timestep embedding).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blendedit.errors import InputError
from blendedit.pixel.schedule import beta_schedule, space_timesteps

# guided-diffusion's NUM_CLASSES: a class-conditional model has one embedding per ImageNet class.
NUM_CLASSES = 1000

# guided-diffusion's channel_mult when the config leaves it empty; there is none for other sizes.
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
# Keys found in guided-diffusion / Blended Diffusion argument dicts that do not affect the model.
_IGNORED_KEYS = frozenset(
    {"clip_denoised", "num_samples", "batch_size", "use_ddim", "model_path", "num_classes"}
)


@dataclass(frozen=True)
class ADMConfig:
    """guided-diffusion's ``create_model_and_diffusion`` arguments; defaults are guided-diffusion's.

    Values are coerced (``"true"`` -> True, ``"64"`` -> 64, a list of resolutions -> ``"32,16,8"``)
    and checked; a bad one raises :class:`~blendedit.errors.InputError`. ``class_cond`` adds the
    embedding of :data:`NUM_CLASSES` ImageNet classes (``label_emb``) and makes the class ``y`` an
    input of the model. ``use_checkpoint`` (gradient checkpointing) is accepted and ignored;
    ``use_kl`` and ``rescale_learned_sigmas`` only change the training loss. ``sigma_small`` picks
    the fixed variance when ``learn_sigma`` is False.
    """

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    attention_resolutions: str = "16,8"
    channel_mult: str = ""
    learn_sigma: bool = False
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    class_cond: bool = False
    dropout: float = 0.0
    use_fp16: bool = False
    use_new_attention_order: bool = False
    use_checkpoint: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    timestep_respacing: str = ""
    rescale_timesteps: bool = False
    predict_xstart: bool = False
    rescale_learned_sigmas: bool = False
    use_kl: bool = False
    sigma_small: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(
                self, f.name, _coerce(f.name, getattr(self, f.name), type(f.default))
            )
        if self.use_new_attention_order:
            raise InputError("ADM config: use_new_attention_order=True is not supported")
        for name in ("image_size", "num_channels", "num_res_blocks", "diffusion_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"ADM config: {name}={getattr(self, name)} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"ADM config: dropout={self.dropout} must be in [0, 1)")
        if self.num_heads < 1 and self.num_head_channels < 1:
            raise InputError("ADM config: set num_heads or num_head_channels to a positive value")
        levels = len(self.channel_mults)  # parses and checks channel_mult
        if self.image_size % 2 ** (levels - 1):
            raise InputError(
                f"ADM config: image_size={self.image_size} is not divisible by 2^{levels - 1}"
            )
        self.attention_ds  # noqa: B018 - parses and checks attention_resolutions
        beta_schedule(self.noise_schedule, 2)  # checks the schedule name
        space_timesteps(self.diffusion_steps, self.timestep_respacing)  # checks the respacing

    @property
    def channel_mults(self) -> tuple[float, ...]:
        """Width multiplier per resolution level, e.g. (1, 1, 2, 2, 4, 4) for 256."""
        if not self.channel_mult.strip():
            if self.image_size not in DEFAULT_CHANNEL_MULT:
                raise InputError(
                    f"ADM config: no default channel_mult for image_size={self.image_size};"
                    " set channel_mult, e.g. '1,1,2'"
                )
            return DEFAULT_CHANNEL_MULT[self.image_size]
        try:
            mults = tuple(int(m) for m in self.channel_mult.split(","))
        except ValueError:
            mults = ()
        if not mults or min(mults) < 1:
            raise InputError(
                f"ADM config: channel_mult={self.channel_mult!r} is not a list of ints"
            )
        return mults

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsampling factors at which blocks get attention: image_size // resolution."""
        try:
            res = [int(r) for r in self.attention_resolutions.split(",") if r.strip()]
        except ValueError:
            res = [0]
        if any(r < 1 or self.image_size % r for r in res):
            raise InputError(
                f"ADM config: attention_resolutions={self.attention_resolutions!r} must be"
                f" resolutions dividing image_size={self.image_size}"
            )
        return tuple(self.image_size // r for r in res)

    @property
    def out_channels(self) -> int:
        return 6 if self.learn_sigma else 3

    @property
    def num_classes(self) -> int:
        """Rows of the class embedding: :data:`NUM_CLASSES` if ``class_cond``, else 0."""
        return NUM_CLASSES if self.class_cond else 0

    def heads(self, channels: int, upsample: bool = False) -> int:
        """Attention heads for a block of ``channels``: channels // num_head_channels if that is
        set, else num_heads (num_heads_upsample in the decoder, unless it is -1)."""
        if self.num_head_channels > 0:
            if channels % self.num_head_channels:
                raise InputError(
                    f"ADM config: {channels} channels are not a multiple of"
                    f" num_head_channels={self.num_head_channels}"
                )
            return channels // self.num_head_channels
        up = upsample and self.num_heads_upsample > 0
        heads = self.num_heads_upsample if up else self.num_heads
        if heads < 1 or channels % heads:
            raise InputError(f"ADM config: {channels} channels cannot be split into {heads} heads")
        return heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ADMConfig:
        """From guided-diffusion arguments, flat or under ``create_model_and_diffusion_kwargs``."""
        if isinstance(data, dict) and "create_model_and_diffusion_kwargs" in data:
            data = data["create_model_and_diffusion_kwargs"]
        if not isinstance(data, dict):
            raise InputError(f"ADM config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - _IGNORED_KEYS)
        if unknown:
            raise InputError(f"ADM config: unknown setting(s) {', '.join(unknown)}")
        cfg = cls(**{k: v for k, v in data.items() if k in names})
        given = data.get("num_classes")
        if cfg.class_cond and given is not None and given != NUM_CLASSES:
            raise InputError(
                f"ADM config: num_classes={given!r}; class-conditional ADM models have"
                f" {NUM_CLASSES} (ImageNet)"
            )
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> ADMConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
            raise InputError(f"cannot read ADM config {path}: {_one_line(e)}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(name: str, value: Any, kind: type) -> Any:
    """Coerce a JSON/argparse value to the field's type, or raise a one-line InputError."""
    ok = True
    if kind is bool:
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if isinstance(value, str) and value.strip().lower() in words:
            value = words[value.strip().lower()]
        elif isinstance(value, int) and value in (0, 1):
            value = bool(value)
        ok = isinstance(value, bool)
    elif kind in (int, float):
        try:
            num = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            num = math.nan
        ok = math.isfinite(num) and (kind is float or num.is_integer())
        value = kind(num) if ok else value
    elif isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # e.g. timestep_respacing: 100
    else:
        ok = isinstance(value, str)
    if not ok:
        raise InputError(f"ADM config: {name}={value!r} is not a valid {kind.__name__}")
    return value


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


# Blended Diffusion's 256x256 unconditional ImageNet model (256x256_diffusion_uncond.pt), with its
# 100-step respacing. The official code also sets use_fp16=True on the GPU; this preset keeps the
# float32 model of the reference data and load_adm's dtype argument picks the precision.
ADM256_UNCOND = ADMConfig(
    image_size=256,
    num_channels=256,
    num_res_blocks=2,
    num_heads=4,
    num_head_channels=64,
    num_heads_upsample=-1,
    attention_resolutions="32,16,8",
    channel_mult="",
    learn_sigma=True,
    use_scale_shift_norm=True,
    resblock_updown=True,
    class_cond=False,
    dropout=0.0,
    use_fp16=False,
    use_new_attention_order=False,
    diffusion_steps=1000,
    noise_schedule="linear",
    timestep_respacing="100",
    rescale_timesteps=True,
    predict_xstart=False,
    rescale_learned_sigmas=False,
    use_kl=False,
)

# guided-diffusion's class-conditional 512x512 ImageNet model (512x512_diffusion.pt): the flags of
# its README (channel_mult left to the 512 default, 0.5,1,1,2,2,4,4), with Blended Diffusion's
# 100-step respacing and rescaled timesteps (the official script's --model_output_size 512).
ADM512_COND = dataclasses.replace(ADM256_UNCOND, image_size=512, class_cond=True)


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding, (B,) -> (B, dim) float32: [cos(t·f_i) | sin(t·f_i)], cosines first,
    f_i = exp(−ln(max_period)·i/half) for i < half = dim // 2 (zero-padded if dim is odd)."""
    half = dim // 2
    arange = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * arange / half)  # (half,)
    args = timesteps[:, None].float() * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups and eps 1e-5, computed in float32 whatever the input dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight.float(), self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _resample(x: Tensor, mode: str | None) -> Tensor:
    """'down': 2x2 average pool, stride 2; 'up': nearest-neighbour x2; None: identity."""
    if mode == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return x


class Downsample(nn.Module):
    """Strided 3x3 conv (``op``); only used when resblock_updown is False."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv (``conv``); only used when resblock_updown is False."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(_resample(x, "up"))


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding (ADM paper, sections 3 and 3.1).

    in_layers: norm, SiLU, conv3x3 (resampled between SiLU and conv when ``updown`` is set,
    BigGAN-style, and x is resampled the same way for the skip). emb_layers: SiLU, Linear to 2C
    (scale-shift) or C. out_layers: norm, SiLU, dropout, conv3x3. With scale-shift norm
    (AdaGN) h = norm(h)·(1 + s) + b, s the first half of the projection, b the second.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        emb_channels: int,
        dropout: float,
        scale_shift: bool,
        updown: str | None = None,
    ) -> None:
        super().__init__()
        self.scale_shift, self.updown = scale_shift, updown
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        emb_out = 2 * out_channels if scale_shift else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        same = out_channels == channels
        self.skip_connection = nn.Identity() if same else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # x: (B, C_in, H, W), emb: (B, 4·mc) -> (B, C_out, H', W'), H' = H/2, H or 2H
        h = self.in_layers[:-1](x)
        h = self.in_layers[-1](_resample(h, self.updown))
        x = _resample(x, self.updown)
        e = self.emb_layers(emb).to(h.dtype)[..., None, None]  # (B, 2·C_out or C_out, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions with a residual add (ADM paper, sec. 3).

    qkv is a 1x1 Conv1d C -> 3C in the *legacy* layout: head h owns channels [3dh, 3d(h+1)),
    ordered q, k, v (d = C/heads). Logits are q·k/√d; the softmax runs over keys.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        x = x.reshape(b, c, -1)  # (B, C, T), T = H·W row-major
        qkv = self.qkv(self.norm(x))  # (B, 3C, T)
        qkv = qkv.reshape(b, self.num_heads, 3, c // self.num_heads, -1)  # (B, heads, 3, d, T)
        q, k, v = qkv.transpose(-1, -2).unbind(2)  # each (B, heads, T, d)
        if q.device.type == "cpu" and q.dtype != torch.float32:  # keep the softmax in float32
            a = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d)
        a = a.transpose(-1, -2).reshape(b, c, -1)  # (B, C, T), channel = head·d + i
        return (x + self.proj_out(a)).reshape(b, c, height, width)


class EmbedSequential(nn.Sequential):
    """Sequential that hands the timestep embedding to the ResBlocks among its layers."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The ADM UNet of guided-diffusion (Dhariwal & Nichol 2021, section 3).

    forward(x (B, 3, H, W), timesteps (B,) float, original scale 0..1000, y (B,) int64 class
    labels for a class-conditional model, else None) -> (B, 6, H, W) = [ε | v] with a learned
    sigma (else (B, 3, H, W) = ε). Class conditioning (section 4): the timestep embedding plus
    ``label_emb(y)``, a learned (num_classes, 4·mc) table, feeds every ResBlock. Encoder:
    conv3x3, then per level ``num_res_blocks`` ResBlocks (+ attention where the downsampling
    factor is in ``config.attention_ds``) and a down block between levels; middle: ResBlock,
    attention, ResBlock; decoder: per level ``num_res_blocks + 1`` ResBlocks over [h, popped skip]
    (+ attention) and an up block; head: norm, SiLU, conv3x3.
    """

    def __init__(self, config: ADMConfig) -> None:
        super().__init__()
        self.config = cfg = config
        mc, mults, attn_ds = cfg.num_channels, cfg.channel_mults, cfg.attention_ds
        emb_dim = 4 * mc
        res = partial(
            ResBlock,
            emb_channels=emb_dim,
            dropout=cfg.dropout,
            scale_shift=cfg.use_scale_shift_norm,
        )
        self.time_embed = nn.Sequential(
            nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if cfg.class_cond:  # registered here: its key follows time_embed in the state dict
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        ch = int(mults[0] * mc)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(3, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(mults):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, cfg.heads(ch)))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(mults) - 1:
                down = res(ch, ch, updown="down") if cfg.resblock_updown else Downsample(ch)
                self.input_blocks.append(EmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(
            res(ch, ch), AttentionBlock(ch, cfg.heads(ch)), res(ch, ch)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(mult * mc))]
                ch = int(mult * mc)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, cfg.heads(ch, upsample=True)))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, updown="up") if cfg.resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        )

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the block convolutions (float16 after :meth:`convert_to_fp16`)."""
        return self.input_blocks[0][0].weight.dtype

    def convert_to_fp16(self) -> ADMUNet:
        """guided-diffusion's mixed precision: the convolutions of the encoder, middle and decoder
        in float16; time embedding, embedding projections, norms and head stay as they are."""
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            for m in blocks.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.half()
        return self

    @property
    def num_classes(self) -> int:
        """Classes the model is conditioned on (0: unconditional)."""
        return self.config.num_classes

    def forward(self, x: Tensor, timesteps: Tensor | float, y: Tensor | None = None) -> Tensor:
        if (y is not None) != self.config.class_cond:
            raise ValueError(
                "ADM: give class labels y if and only if the model is class-conditional"
                f" (class_cond={self.config.class_cond})"
            )
        t = torch.as_tensor(timesteps, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t  # (B,)
        t_emb = timestep_embedding(t, self.config.num_channels)  # (B, mc) float32
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))  # (B, 4·mc)
        if y is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"ADM: y has shape {tuple(y.shape)}, expected ({x.shape[0]},)")
            emb = emb + self.label_emb(y.to(x.device))  # (B, 4·mc)
        h = x.to(self.dtype)  # (B, 3, H, W)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)  # (B, C_max, H/2^(L-1), W/2^(L-1))
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)  # current h first
        return self.out(h.to(self.out[-1].weight.dtype)).to(x.dtype)  # (B, 6, H, W)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise InputError(f"ADM checkpoint {path}: expected a .safetensors, .pt or .pth file")
    if not path.is_file():
        raise InputError(f"ADM checkpoint {path} does not exist or is not a file")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # any failure to parse the file is the user's input problem
        raise InputError(f"cannot read ADM checkpoint {path}: {_one_line(e)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"ADM checkpoint {path} is not a state dict of tensors")
    return state


def _few(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more if keys else "none"


def is_class_conditional(checkpoint_path: str | Path) -> bool:
    """Whether an ADM checkpoint has a class embedding (``label_emb.weight``), read cheaply: the
    safetensors header, or the .pt file memory-mapped. False for a file that cannot be read (the
    loader reports that)."""
    path = Path(checkpoint_path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return "label_emb.weight" in f.keys()  # noqa: SIM118 - not a dict
        return "label_emb.weight" in _read_state_dict(path)
    except (InputError, OSError, ValueError, RuntimeError):
        return False


def default_config(state: dict[str, Tensor] | str | Path) -> ADMConfig:
    """The official config a checkpoint (its state dict or file) is taken to be when none is
    given: :data:`ADM512_COND` if it has a class embedding, else :data:`ADM256_UNCOND`."""
    cond = "label_emb.weight" in state if isinstance(state, dict) else is_class_conditional(state)
    return ADM512_COND if cond else ADM256_UNCOND


def load_adm(
    checkpoint_path: str | Path,
    config: ADMConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ADMUNet:
    """Build an :class:`ADMUNet` for ``config`` and load a checkpoint strictly, in eval mode with
    gradients off for the weights (gradients w.r.t. the input still flow, for guidance).

    ``config`` None: :func:`default_config` of the checkpoint (the official 512 class-conditional
    or 256 unconditional settings). The module is built on the ``meta`` device and the loaded
    tensors are assigned to it, so the weights (553M parameters for the 256x256 model, 559M for
    the 512x512 one) are held once. ``config.use_fp16`` then applies guided-diffusion's mixed
    precision (:meth:`ADMUNet.convert_to_fp16`).
    """
    path = Path(checkpoint_path)
    state = _read_state_dict(path)
    config = config if config is not None else default_config(state)
    with torch.device("meta"):
        model = ADMUNet(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise InputError(
            f"ADM checkpoint {path} does not fit the config: missing {_few(missing)};"
            f" unexpected {_few(unexpected)}"
        )
    for key, want in expected.items():
        if state[key].shape != want.shape:
            raise InputError(
                f"ADM checkpoint {path}: {key} has shape {tuple(state[key].shape)},"
                f" the config needs {tuple(want.shape)}"
            )
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device=device, dtype=dtype)
    if config.use_fp16:
        model.convert_to_fp16()
    return model.eval().requires_grad_(False)
