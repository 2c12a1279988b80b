"""Step caches inside the BLD loop (``--cache NAME[:VALUE]``): a step reuses the deep part of the
denoiser's previous call instead of running the whole network.

- ``first-block``: First Block Cache (ParaAttention's, after TeaCache, Liu et al. 2024, sec. 3),
  diffusers' hook on a transformer's blocks (SD3, FLUX): the first block runs; when its residual
  changed by less than VALUE (relative mean absolute change, default 0.05) since the last full
  call, the other blocks are skipped and their cached residual added. The blend replaces the
  latent outside the mask at every step, so here the change is measured on the mask's tokens
  only (:func:`masked_change`): the background's tokens follow the source's schedule and would
  otherwise dilute (small masks) or dominate the criterion.
- ``taylorseer``: TaylorSeer (Liu et al. 2025, sec. 3.2), diffusers' hook on a transformer's
  attention: a full call every VALUE steps (default 5) after 3 warm-up calls, first-order Taylor
  predictions of the attention outputs between them.
- ``magcache``: MagCache (Ma et al. 2025, sec. 3.2-3.3), diffusers' hook on a transformer's
  blocks with diffusers' published FLUX.1 magnitude ratios (``FLUX_MAG_RATIOS``, 28 steps,
  interpolated to the schedule): a call is skipped (input + last residual) while the accumulated
  error sum |1 - prod(ratio)| stays <= VALUE (default 0.06), at most 3 in a row, never in the
  first 20% of the whole schedule; 0 skips nothing. The BLD loop starts at blend_start: the hook's step counter is
  set to the chunk's first step in the full schedule, so ratios and retention stay those of the
  whole schedule. Other families have no published ratios: one line.
- ``pab``: Pyramid Attention Broadcast (Zhao et al. 2024, sec. 3.2), diffusers' hook on a
  transformer's (joint) attention: inside timesteps (100, 800) the attention outputs are computed
  every VALUE-th call (default 2) and broadcast to the calls between; outside the range every
  call computes. The hook counts calls from the chunk's first (which always computes) and reads
  the loop's timestep, so starting at blend_start needs no offset. One state for every call: a
  family calling the denoiser twice a step (Qwen-Image's prompt and negative apart; TaylorSeer's,
  First Block Cache's and MagCache's states are kept per branch by ``cache_context``) is one line.
- ``fastercache``: FasterCache (Lv et al. 2024, sec. 3.2-3.3), diffusers' hooks on a transformer
  and its blocks' attention: the attention runs every VALUE-th call (default 2) below t = 681
  and is extrapolated from its last two outputs between; with classifier-free guidance batched
  [unconditional; conditional] in one call (blendedit's order is diffusers') the unconditional
  half is skipped below t = 641 but every 5th call and approximated from the conditional output
  in the frequency domain. The chunk's first call runs uncached and shows the layout
  (:func:`faster_cache_config`): one pass is ``is_guidance_distilled``; a guided call splits on
  its arguments of twice the batch; two calls a step (the prompt and the negative apart) or a
  guided call returning tokens instead of an image cannot be matched (one line). The hooks'
  first call computes everything (the timestep callback puts it before the ranges: diffusers'
  hook assumes a pipeline's first step at t = 1000, not blend_start's).
- ``deepcache``: DeepCache (Ma, Fang, Wang 2024, sec. 3.2-3.3, uniform 1:N strategy) for UNets,
  for which diffusers has no cache: every VALUE-th call (default 3) runs in full and keeps the
  features entering the outermost up block; the calls between run only the outermost down block,
  that up block and the UNet's stem and head (:class:`DeepCache`).

The wrapper (:meth:`StepCache.wrap`) wraps the loop's model function like guidance does; hooks are
installed per chunk of candidates and removed after it (:func:`step_cache`), so no state crosses
chunks or edits. A cache that skips no call gives bit-identical results (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from blendedit.config import CACHE_DEFAULTS, parse_cache
from blendedit.errors import InputError
from blendedit.latent.sampling import ModelFn

TRANSFORMER_CACHES = ("first-block", "taylorseer", "magcache", "pab", "fastercache")
MAGCACHE_MODELS = ("FluxTransformer2DModel",)  # those with diffusers' published ratios
# diffusers 0.42's First Block Cache subtracts the first block's (image, text) pair from the last
# block's output; FLUX.2's single blocks return the image stream alone, so it fails there.
NO_FIRST_BLOCK_MODELS = ("Flux2Transformer2DModel",)
UNET_CACHES = ("deepcache",)
_HOOKS = {  # diffusers' hook names, removed after each chunk
    "first-block": ("fbc_leader_block_hook", "fbc_block_hook"),
    "taylorseer": ("taylorseer_cache",),
    "magcache": ("mag_cache_leader_block_hook", "mag_cache_block_hook"),
    "pab": ("pyramid_attention_broadcast",),
    "fastercache": ("faster_cache_denoiser", "faster_cache_block"),
}
_BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")  # in call order
_QUERY_PROJECTIONS = ("to_q", "to_qkv_mlp_proj")  # an attention's first projection, by name


@dataclass
class CacheStats:
    """Denoiser calls of one chunk, and how many ran the whole network."""

    calls: int = 0
    full: int = 0

    @property
    def skipped(self) -> int:
        return self.calls - self.full


def blocks_of(module: torch.nn.Module) -> list[torch.nn.Module]:
    """A transformer's blocks in call order (empty for a UNet)."""
    out: list[torch.nn.Module] = []
    for name in _BLOCK_LISTS:
        blocks = getattr(module, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            out.extend(blocks)
    return out


def _is_unet(module: torch.nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("down_blocks", "mid_block", "up_blocks"))


def _context_pre_only(block: torch.nn.Module) -> bool:
    """The block returns no text stream (SD3's last): First Block Cache then ends a block early."""
    return bool(getattr(block, "context_pre_only", False))


def _registered(blocks: list[torch.nn.Module]) -> bool:
    """diffusers' First Block Cache and MagCache read each block's signature from its registry
    (diffusers.hooks._helpers); a block class it does not know (Chroma's) fails inside the hook."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    try:
        for cls in {type(b) for b in blocks}:
            TransformerBlockRegistry.get(cls)
    except ValueError:
        return False
    return True


def kinds_for(module: torch.nn.Module) -> tuple[str, ...]:
    """The caches a denoiser takes: the transformer ones, or DeepCache for a UNet."""
    module = getattr(module, "_orig_mod", module)
    blocks = blocks_of(module)
    if len(blocks) >= 2 + (len(blocks) > 0 and _context_pre_only(blocks[-1])):
        name = type(module).__name__
        drop = ("magcache",) * (name not in MAGCACHE_MODELS)
        drop += ("first-block",) * (name in NO_FIRST_BLOCK_MODELS or not _registered(blocks))
        return tuple(c for c in TRANSFORMER_CACHES if c not in drop)
    return UNET_CACHES if _is_unet(module) else ()


def check_cache(spec: str, module: torch.nn.Module, model: str) -> None:
    """One line when this denoiser has no such cache (``model``: what it is, e.g. "SD 2.x")."""
    name, _ = parse_cache(spec)
    kinds = kinds_for(module)
    if name != "none" and name not in kinds:
        fits = ", ".join(kinds) if kinds else "none"
        if name == "magcache" and kinds:
            raise InputError(
                f"cache: 'magcache' has no calibrated ratios for a {model} model (diffusers ships "
                f"FLUX.1's only); it takes {fits}"
            )
        raise InputError(f"cache: {name!r} does not apply to a {model} model; it takes {fits}")


def masked_change(
    residual: torch.Tensor, previous: torch.Tensor, token_mask: torch.Tensor | None
) -> float:
    """First Block Cache's criterion, mean|r - r_prev| / mean|r_prev| over the tokens of the mask
    (ParaAttention's rule, restricted to the edited tokens). residual, previous: (B, N, D);
    token_mask: (1, N, 1) of 0/1, None: every token."""
    diff, prev = (residual - previous).abs(), previous.abs()
    if token_mask is None or token_mask.shape[1] != residual.shape[1]:
        return float(diff.mean() / prev.mean())
    w = token_mask.to(diff)
    return float((diff * w).sum() / (prev * w).sum().clamp_min(1e-12))


def token_mask(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """(1, 1, h, w) latent mask -> (1, N, 1): a token is edited if any of its cells is, tokens in
    raster order (SD3's patch embedding and FLUX's packing both)."""
    m = F.max_pool2d((mask > 0).float(), patch) if patch > 1 else (mask > 0).float()
    return m.flatten(1)[..., None]


class DeepCache:
    """DeepCache's skip branch on a diffusers UNet (Ma et al. 2024, sec. 3.2, branch 1): the deep
    down blocks, the mid block and every up block but the last return their last full call's
    outputs while :attr:`full` is False, so only ``conv_in``, ``down_blocks[0]``,
    ``up_blocks[-1]`` and ``conv_out`` run. The cached outputs are those of the same batch of
    latents (B, C, h, w) one or more steps before; the skip connections of ``down_blocks[0]`` are
    fresh."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.full = True
        self.cached: dict[int, Any] = {}
        deep = [*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1]]
        self.modules = [m for m in deep if m is not None]
        # An instance ``forward`` already there (accelerate's offload hooks) is put back by close().
        self.saved = [m.__dict__.get("forward") for m in self.modules]
        for i, m in enumerate(self.modules):
            m.forward = self._wrap(i, m.forward)

    def _wrap(self, i: int, forward: Callable[..., Any]) -> Callable[..., Any]:
        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            if self.full or i not in self.cached:
                self.cached[i] = forward(*args, **kwargs)
            return self.cached[i]

        return cached_forward

    def close(self) -> None:
        for m, saved in zip(self.modules, self.saved, strict=True):
            if saved is None:
                del m.forward
            else:
                m.forward = saved
        self.cached.clear()


def _end_early(blocks: list[torch.nn.Module], state_manager: Any) -> torch.nn.Module:
    """First Block Cache's tail moved to the block before a last block that returns no text stream
    (diffusers' tail hook needs both streams): that last block then always runs. Returns the new
    tail."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.first_block_cache import FBCBlockHook

    for block in blocks[-2:]:
        HookRegistry.check_if_exists_or_initialize(block).remove_hook("fbc_block_hook", False)
    tail = blocks[-2]
    HookRegistry.check_if_exists_or_initialize(tail).register_hook(
        FBCBlockHook(state_manager, is_tail=True), "fbc_block_hook"
    )
    return tail


def faster_cache_config(
    seen: list[dict[str, int]], shapes: list[int], batch: int, interval: int, model: str
) -> tuple[Any, int]:
    """FasterCache (Lv et al. 2024, sec. 3.2-3.3) for the layout of one loop call: ``seen``, each
    denoiser call's tensor arguments -> batch size; ``shapes``, each output's dimensions; ``batch``
    the loop's candidates B. Returns diffusers' config and the batch of a whole-network call.

    One call a step is needed (the hooks count calls as steps). A call of 2B is classifier-free
    guidance batched [unconditional; conditional], blendedit's order and diffusers'; its
    unconditional half is then approximated from the conditional one every call but each 5th
    (diffusers' default) in the frequency domain, which needs an output image (B, C, h, w), and
    the arguments of 2B are the ones split. A call of B (no guidance, or distilled guidance) is
    ``is_guidance_distilled``: the attention alone is extrapolated. The attention of the blocks
    runs every ``interval``-th call and is extrapolated between (weight 0.5, diffusers' default);
    1 computes everything."""
    from diffusers.hooks import FasterCacheConfig

    if len(seen) != 1:
        raise InputError(
            f"cache: 'fastercache' needs one denoiser call a step; a {model} model makes "
            f"{len(seen)} here (the prompt and the negative apart): use --guidance 1 or another cache"
        )
    sizes = seen[0]
    full = sizes.get("hidden_states", sizes.get("0", batch))  # the latents' batch
    guided = full == 2 * batch
    if guided and any(b != full for k, b in sizes.items() if k.isdigit()):
        raise InputError(  # diffusers' hook splits every positional tensor
            f"cache: 'fastercache' cannot split this {model} model's call in two halves; "
            "use --guidance 1 or another cache"
        )
    if guided and shapes[0] != 4:
        raise InputError(
            f"cache: 'fastercache' approximates the unconditional half from an output image "
            f"(B, C, h, w); a {model} model returns tokens: use --guidance 1 or another cache"
        )
    config = FasterCacheConfig(
        spatial_attention_block_skip_range=interval,
        unconditional_batch_skip_range=5 if interval > 1 else 1,
        attention_weight_callback=lambda _: 0.5,
        tensor_format="BCHW",
        is_guidance_distilled=not guided,
        _unconditional_conditional_input_kwargs_identifiers=[
            k for k, b in sizes.items() if guided and b == full
        ],
    )
    return config, full


class StepCache:
    """One chunk's cache on a denoiser: :meth:`wrap` the model function, :attr:`stats` after."""

    def __init__(
        self,
        module: torch.nn.Module,
        spec: str,
        mask: torch.Tensor,
        patch: int,
        steps: tuple[int, int] = (0, 0),
    ) -> None:
        check_cache(spec, module, type(getattr(module, "_orig_mod", module)).__name__)
        self.name, value = parse_cache(spec)
        self.value = CACHE_DEFAULTS.get(self.name, 0.0) if value is None else value
        self.module = getattr(module, "_orig_mod", module)  # hooks go on the eager module
        self.stats = CacheStats()
        self.deep: DeepCache | None = None
        self._probe: Any = None
        self._ran = False
        self._first, self._total = steps  # this chunk's first call and the schedule's length
        self._mag: Any = None  # MagCache's head hook
        self._t = 0.0  # the loop's current timestep, for Pyramid Attention Broadcast
        self._full_batch: int | None = None  # FasterCache: the batch of a whole-network call
        self._fresh = False  # FasterCache: its hooks' first call is still to come
        if self.name == "fastercache":
            pass  # installed at the chunk's first call, once its layout is seen (:meth:`_faster`)
        elif self.name in TRANSFORMER_CACHES:
            self._install_diffusers(token_mask(mask, patch).to(mask.device))
        elif self.name == "deepcache":
            self.deep = DeepCache(self.module)

    def _install_diffusers(self, tokens: torch.Tensor) -> None:
        from diffusers.hooks import (
            FirstBlockCacheConfig,
            HookRegistry,
            MagCacheConfig,
            PyramidAttentionBroadcastConfig,
            TaylorSeerCacheConfig,
            apply_first_block_cache,
            apply_mag_cache,
            apply_pyramid_attention_broadcast,
            apply_taylorseer_cache,
        )
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        blocks = blocks_of(self.module)
        last = blocks[-1]
        if self.name == "first-block":
            apply_first_block_cache(self.module, FirstBlockCacheConfig(threshold=self.value))
            hook = HookRegistry.check_if_exists_or_initialize(blocks[0]).get_hook(
                "fbc_leader_block_hook"
            )
            if _context_pre_only(last):
                last = _end_early(blocks, hook.state_manager)

            @torch.compiler.disable  # a host decision, as diffusers' own criterion
            def should_compute(residual: torch.Tensor) -> bool:
                prev = hook.state_manager.get_state().head_block_residual
                return prev is None or masked_change(residual, prev, tokens) > self.value

            hook._should_compute_remaining_blocks = should_compute  # the mask-only criterion
        elif self.name == "magcache":
            total = max(self._total, 1)
            # Threshold 0 skips nothing: the hook's `err <= threshold` would skip where a ratio
            # is exactly 1 (FLUX's 28 ratios interpolated to 8 steps have one), so no skips at 0.
            config = MagCacheConfig(
                threshold=self.value,
                max_skip_steps=3 if self.value > 0 else 0,
                num_inference_steps=total,
                mag_ratios=FLUX_MAG_RATIOS,
            )
            apply_mag_cache(self.module, config)
            registry = HookRegistry.check_if_exists_or_initialize(blocks[0])
            self._mag = registry.get_hook("mag_cache_leader_block_hook")
        elif self.name == "pab":
            config = PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=max(1, int(self.value)),
                current_timestep_callback=lambda: self._t,
            )
            apply_pyramid_attention_broadcast(self.module, config)
        else:
            n = max(1, int(self.value))
            apply_taylorseer_cache(
                self.module, TaylorSeerCacheConfig(cache_interval=n, taylor_factors_dtype=None)
            )
        self._probe_last_attention(last)

    def _probe_last_attention(self, last: torch.nn.Module) -> None:
        """A full call runs the last cached block's attention on the whole batch; a skipped or
        predicted one does not (FasterCache: nor one without the unconditional half)."""
        from diffusers.hooks import HookRegistry

        # diffusers caches which submodules carry hooks: new ones were just added.
        HookRegistry.check_if_exists_or_initialize(self.module).invalidate_child_registries_cache()
        # (FLUX.2's single blocks project q, k, v and the MLP's input in one: to_qkv_mlp_proj.)
        probe = next(m for n, m in last.named_modules() if n.endswith(_QUERY_PROJECTIONS))

        def ran(module: Any, args: Any, out: Any) -> None:
            self._ran = self._full_batch is None or args[0].shape[0] == self._full_batch

        self._probe = probe.register_forward_hook(ran)

    def _faster(self, model_fn: ModelFn, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The chunk's first call runs uncached and shows the call's layout; FasterCache is then
        installed to match it (:func:`faster_cache_config`). Returns that call's output."""
        from diffusers.hooks import apply_faster_cache

        seen: list[dict[str, int]] = []  # per denoiser call: argument -> batch size
        shapes: list[int] = []  # per call: the output's number of dimensions

        def pre(module: Any, args: Any, kwargs: Any) -> None:
            named = {**{str(i): a for i, a in enumerate(args)}, **kwargs}
            seen.append({k: v.shape[0] for k, v in named.items() if torch.is_tensor(v) and v.ndim})

        def post(module: Any, args: Any, kwargs: Any, out: Any) -> None:
            shapes.append((out if torch.is_tensor(out) else out[0]).ndim)

        hooks = [
            self.module.register_forward_pre_hook(pre, with_kwargs=True),
            self.module.register_forward_hook(post, with_kwargs=True),
        ]
        try:
            out = model_fn(z, t)
        finally:
            for h in hooks:
                h.remove()
        model = type(self.module).__name__
        config, self._full_batch = faster_cache_config(
            seen, shapes, z.shape[0], int(max(1, self.value)), model
        )
        config.current_timestep_callback = lambda: 1000.0 if self._fresh else self._t
        apply_faster_cache(self.module, config)
        self._fresh = True
        self._probe_last_attention(blocks_of(self.module)[-1])
        return out

    def _one_call_a_step(self, model_fn: ModelFn, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """PAB's hooks keep one state for every call (no cache context, unlike TaylorSeer's,
        First Block Cache's and MagCache's): a family that calls the denoiser twice a step
        (Qwen-Image's prompt and negative apart) would broadcast one branch's attention to the
        other. The chunk's first call counts them; more than one is one line."""
        calls = [0]
        hook = self.module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        try:
            out = model_fn(z, t)
        finally:
            hook.remove()
        if calls[0] > 1:
            raise InputError(
                f"cache: 'pab' keeps one state for every call; a {type(self.module).__name__} "
                f"model makes {calls[0]} calls a step here (the prompt and the negative apart): "
                "use taylorseer or --guidance 1"
            )
        return out

    def wrap(self, model_fn: ModelFn) -> ModelFn:
        """The model function with this cache's bookkeeping around each call."""
        if self.name == "none":
            return model_fn

        def cached(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self._ran = False
            self._t = float(torch.as_tensor(t).flatten()[0])  # the scheduler's scale, 0..1000
            if self.deep is not None:  # the uniform 1:N strategy: calls 0, N, 2N, ... in full
                self.deep.full = self.stats.calls % max(1, int(self.value)) == 0
                self._ran = self.deep.full
                out = model_fn(z, t)
            else:
                from diffusers.models.cache_utils import CacheMixin

                with CacheMixin.cache_context(self.module, "blend"):  # one context: CFG batched
                    if self._mag is not None and self.stats.calls == 0:
                        # MagCache counts calls from 0: the BLD loop starts at blend_start.
                        self._mag.state_manager.get_state().step_index = self._first
                    if self.name == "fastercache" and self.stats.calls == 0:
                        out, self._ran = self._faster(model_fn, z, t), True
                    elif self.name == "pab" and self.stats.calls == 0:
                        out = self._one_call_a_step(model_fn, z, t)
                        self._fresh = False
                    else:
                        out = model_fn(z, t)
                        self._fresh = False
            self.stats.calls += 1
            self.stats.full += int(self._ran)
            return out

        return cached

    def close(self) -> None:
        """Remove every hook: the denoiser is the uncached one again."""
        if self.deep is not None:
            self.deep.close()
        if self._probe is not None:
            self._probe.remove()
        if self.name in _HOOKS:
            from diffusers.hooks import HookRegistry

            registry = HookRegistry.check_if_exists_or_initialize(self.module)
            for hook in _HOOKS[self.name]:
                registry.remove_hook(hook, recurse=True)
            registry.invalidate_child_registries_cache()


@contextmanager
def step_cache(
    module: torch.nn.Module,
    spec: str,
    mask: torch.Tensor,
    patch: int,
    steps: tuple[int, int] = (0, 0),
) -> Iterator[StepCache]:
    """A fresh :class:`StepCache` for one chunk (mask: (1, 1, h, w), the widest step mask;
    steps: the chunk's first call and the schedule's length, MagCache's step counter)."""
    cache = StepCache(module, spec, mask, patch, steps)
    try:
        yield cache
    finally:
        cache.close()
