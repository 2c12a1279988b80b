"""What a model family provides under the BLD loop (``latent/sampling.py`` knows no family).

A backbone holds a family's modules and answers five questions: text -> conditioning (with pooled
embeddings and micro-conditioning where the family has them), the guided model function, VAE
encode/decode with its scaling, shift and fp16 rules, the native resolution and latent factor, and
its default settings. The noise levels of the blend come from the scheduler (``schedule.py``), not
from the family.

A family is one module (``sd.py``, ``sdxl.py``, ``sd3.py``, ``flux.py``, ``ldm.py``): one subclass
that also owns the family's detection (:attr:`Backbone.pipelines`, :meth:`Backbone.claims_keys`),
loading (:meth:`Backbone.load`), default settings (:meth:`Backbone.model_defaults`), a
random-weight builder (:meth:`Backbone.build`), its bench catalogue entries
(:attr:`Backbone.catalogue`) and its diffusers reference call (:meth:`Backbone.inpaint_reference`,
:meth:`Backbone.reference_prompt`). ``backbones/__init__.py`` registers the classes
(``register_family``); nothing else names a family.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from blendedit.errors import InputError
from blendedit.frame.stop import checkpoint
from blendedit.latent.backbones.parts import Architecture
from blendedit.latent.sampling import ModelFn, classifier_free_guidance

Size = tuple[int, int]  # (W, H)
Name = str | os.PathLike[str]  # a hub id, a diffusers folder or a single checkpoint file
Configs = dict[str, dict[str, Any]]  # part -> config (``Architecture.parts``)
# The text parts a diffusers pipeline takes by these names, where a family has them.
TEXT_PARTS = ("text_encoder", "text_encoder_2", "text_encoder_3")
TEXT_PARTS += ("tokenizer", "tokenizer_2", "tokenizer_3")


@dataclass(frozen=True)
class LoadOptions:
    """How a model is loaded: its dtype, from the cache only, the diffusers folder or hub id of a
    single file's architecture (``--model-config``), SD3 without T5-XXL (``--no-t5``)."""

    dtype: torch.dtype | None = None
    local_files_only: bool | None = None
    config: str | None = None
    drop_t5: bool = False
    quantize: str | None = None  # ``--quantize`` mode (blendedit.latent.quantize.MODES)
    quantized: dict[str, str] = field(default_factory=dict)  # part -> library, the mode's parts


@dataclass
class Conditioning:
    """Text conditioning of one prompt and its negative, each (1, ...); ``added`` holds the
    family's extra model inputs (SDXL: pooled ``text_embeds`` (1, P), ``time_ids`` (1, 6))."""

    cond: torch.Tensor  # (1, L, D)
    uncond: torch.Tensor  # (1, L, D)
    added: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (1, ...)
    added_uncond: dict[str, torch.Tensor] = field(default_factory=dict)
    # Models made for editing: the source image's conditioning (the same for prompt and negative),
    # name -> (1, ...), filled by Backbone.condition_on_image.
    image: dict[str, torch.Tensor] = field(default_factory=dict)

    def same(self) -> bool:
        """Prompt and negative give the same inputs (e.g. both empty): every guidance scale
        then gives the conditional prediction."""
        if self.cond.is_meta:  # shapes only (FLOP counting): nothing to compare
            return False
        return torch.equal(self.cond, self.uncond) and all(
            torch.equal(v, self.added_uncond[k]) for k, v in self.added.items()
        )


class Backbone:
    """A latent text-to-image model family: VAE + denoiser + text encoder(s) + scheduler config.

    Subclasses set the class attributes below and implement :meth:`encode_text`, :meth:`denoiser`,
    :meth:`load` and :meth:`build`; the VAE rules here fit every AutoencoderKL family."""

    family: ClassVar[str] = ""  # the registry's key
    name: ClassVar[str] = ""  # short, in messages ("SDXL")
    title: ClassVar[str] = ""  # long, in the list of what the latent method supports
    # What a model made for a purpose is for, one line (the web editor says it); "" plain models.
    purpose: ClassVar[str] = ""
    # Detection: model_index.json ``_class_name``s this family loads, and those it knows but
    # refuses (class name -> what the model is, one line).
    pipelines: ClassVar[tuple[str, ...]] = ()
    refused: ClassVar[dict[str, str]] = {}
    single_file: ClassVar[bool] = False  # has a single-file key rule (:meth:`claims_keys`)
    bare_folder: ClassVar[bool] = False  # loads a folder of parts without model_index.json
    # ``--lora``: the diffusers LoRA mixin the family's pipelines load LoRAs with (its
    # ``lora_state_dict`` converts the formats, its ``load_lora_into_*`` injects); "" takes none.
    lora_loader: ClassVar[str] = ""
    can_drop_t5: ClassVar[bool] = False  # ``--no-t5``
    # ``--quantize``: the parts diffusers' quantization backends load quantized (part -> its
    # library: the denoiser, the language-model text encoder); empty: the family takes none.
    quantized_parts: ClassVar[dict[str, str]] = {}
    catalogue: ClassVar[dict[str, Architecture]] = {}  # bench presets (published models)
    # The reference: diffusers' inpaint pipeline of the family, and the name it gives the denoiser.
    reference_pipeline: ClassVar[str] = ""
    denoiser_name: ClassVar[str] = "unet"
    # The timing reference where the inpaint pipeline does other work (FLUX.2 [klein]'s also
    # attends to the source's tokens): the family's text-to-image pipeline, its own loop run as an
    # img2img with diffusers' blend added by a callback (``bench.reference.LoopRun``); "": the
    # inpaint pipeline is timed.
    timing_pipeline: ClassVar[str] = ""

    defaults: ClassVar[dict[str, Any]] = {}  # EditConfig fields this family changes (its presets)
    # ... and those a model of the family trained for inpainting changes on top (its pipeline's)
    inpaint_defaults: ClassVar[dict[str, Any]] = {}
    flow: ClassVar[bool] = False  # rectified flow (SD3, FLUX): flow-matching schedulers only

    vae: Any
    unet: Any
    scheduler: Any  # its config is the base of every scheduler made per call
    # SDXL's VAE overflows in fp16: with ``force_upcast`` in its config it then runs in float32
    # (diffusers' rule; an fp16-safe VAE such as madebyollin/sdxl-vae-fp16-fix sets it False).
    fp16_vae_upcast: ClassVar[bool] = False
    offload: str | None = None  # "model" or "sequential" once enable_offload ran
    execution_device: torch.device | None = None  # where modules run when offloaded

    # -- the family: detection, loading, defaults, random weights ---------------------------------

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """Whether an original-layout single file (key -> shape) is this family's; raises
        InputError (one line) for a model of the family that cannot blend."""
        return False

    @classmethod
    def model_defaults(cls, model: Name, local_files_only: bool | None = None) -> dict[str, Any]:
        """The EditConfig fields a model of this family changes, without loading it."""
        return dict(cls.defaults)

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """The model from a hub id, a diffusers folder or a single file."""
        raise NotImplementedError

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """The model of an :class:`Architecture`'s ``parts`` with random weights, built on
        ``device`` ("meta": shapes only); ``workdir`` receives the tokenizer files."""
        raise NotImplementedError

    # -- modules ----------------------------------------------------------------------------------

    def modules(self) -> dict[str, Any]:
        """Name -> torch module, everything that moves with ``.to(device)``."""
        raise NotImplementedError

    def text_encoders(self) -> list[Any]:
        """The text encoder(s), in the order a LoRA's text-encoder weights address them (None
        where the model lacks one)."""
        raise NotImplementedError

    def vae_dtype_for(self, dtype: torch.dtype | None) -> torch.dtype | None:
        upcast = self.fp16_vae_upcast and getattr(self.vae.config, "force_upcast", False)
        return torch.float32 if upcast and dtype == torch.float16 else dtype

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        for name, m in self.modules().items():
            if getattr(m, "is_quantized", False):  # ``--quantize``: its dtypes were chosen at load
                m.to(device=device)
                continue
            m.to(device=device, dtype=self.vae_dtype_for(dtype) if name == "vae" else dtype)

    @property
    def device(self) -> torch.device:
        """Where inputs go and the model runs (the execution device when offloaded)."""
        return self.execution_device or self.unet.device

    def enable_offload(self, mode: str, device: torch.device | str) -> None:
        """Keep the weights in CPU memory and move them to ``device`` only while they run
        (accelerate hooks): "model" one whole component at a time (text encoders, then the
        denoiser, then the VAE: peak = the largest component), "sequential" one submodule at a
        time (least memory, slowest)."""
        from accelerate import cpu_offload, cpu_offload_with_hook

        dev = torch.device(device)
        order = [m for m in self.text_encoders() if m is not None] + [self.unet, self.vae]
        if mode == "model":
            hook = None
            for m in order:
                m.to("cpu")
                _, hook = cpu_offload_with_hook(m, dev, prev_module_hook=hook)
        elif mode == "sequential":
            for m in order:
                cpu_offload(m, dev)
        else:
            raise ValueError(f"offload: {mode!r} is not model or sequential")
        self.offload, self.execution_device = mode, dev

    @contextmanager
    def offload_paused(self) -> Iterator[None]:
        """Around a change of the modules (LoRA layers put on or taken off): sequential offload
        keeps the weights off the modules (on "meta") between calls, so its hooks come off first
        (each weight back in its module, in CPU memory) and on again after. Whole-module offload
        keeps real weights in CPU memory: nothing to do."""
        if self.offload != "sequential":
            yield
            return
        from accelerate.hooks import remove_hook_from_module

        device = self.execution_device
        for m in [m for m in self.text_encoders() if m is not None] + [self.unet, self.vae]:
            remove_hook_from_module(m, recurse=True)
        self.offload, self.execution_device = None, None
        try:
            yield
        finally:
            self.enable_offload("sequential", device)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    # -- geometry ---------------------------------------------------------------------------------

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell (8 for every SD family)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """The resolution the model was trained at (512 SD 1.5/2.1-base, 1024 SDXL, 256 LDM)."""
        s = self.unet.config.sample_size
        return int(s if isinstance(s, int) else max(s)) * self.latent_factor

    @property
    def patch_size(self) -> int:
        """Latent cells per token side of a transformer (2 for SD3 and FLUX), 1 for a UNet."""
        return 1

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE's latents, z = E(x) (B, C, h, w)."""
        return int(self.vae.config.latent_channels)

    @property
    def model_in_channels(self) -> int:
        """What a plain text-to-image denoiser takes (an inpainting one takes more)."""
        return int(self.vae.config.latent_channels)

    @property
    def inpainting(self) -> bool:
        """A model trained for inpainting: the mask and the masked image's latents enter the
        denoiser beside the noisy latent (SD/SDXL 9-channel UNets, FLUX.1 Fill; filled by
        :meth:`condition_on_image`). It inpaints alone, so the blend is a choice (``--blend``)."""
        return False

    @property
    def size_multiple(self) -> int:
        """Working sizes are multiples of this many pixels (latent factor x patch size)."""
        return self.latent_factor * self.patch_size

    def timestep_kwargs(self, num_steps: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
        """Extra ``scheduler.set_timesteps`` arguments (flow models: sigmas, the shift mu)."""
        return {}

    def reference_strength(self, n: int, begin: int) -> float:
        """The ``strength`` at which diffusers' inpaint pipeline of this family runs the same
        steps as BLD: SD/SDXL run ``int(n * strength)``, so half a step above ``n - begin``; the
        flow pipelines (SD3, FLUX) start at ``int(n - n * strength)``, so half a step below."""
        return (n - begin + (-0.5 if self.flow else 0.5)) / n

    # -- text -------------------------------------------------------------------------------------

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        """Prompt and negative prompt -> :class:`Conditioning`. ``work_size``: the (W, H) the
        model runs at; ``source_size``: the region's real (W, H) in photo pixels."""
        raise NotImplementedError

    # -- the model function ------------------------------------------------------------------------

    @property
    def guidance_embedded(self) -> bool:
        """The scale is a model input (LCM-distilled UNet, FLUX.1-dev): one pass, no CFG."""
        return getattr(self.unet.config, "time_cond_proj_dim", None) is not None  # LCM

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        """``denoise(z (len(parts) * B, C, h, w), t)`` on the ``parts`` ("uncond", "cond") of
        ``c``, each repeated ``batch`` times, in that order."""
        raise NotImplementedError

    def condition_on_image(
        self, c: Conditioning, x: torch.Tensor, mask: torch.Tensor, z_init: torch.Tensor
    ) -> Conditioning:
        """Models made for editing take the source image as conditioning: ``x`` the crop at the
        working size as the frame gives it (1, 3, H, W), ``mask`` its soft mask (1, 1, H, W),
        1 = edit, ``z_init`` = E(x) (1, C, h, w). Plain text-to-image families return ``c``."""
        return c

    def model_fn(self, c: Conditioning, batch: int, guidance_scale: float) -> ModelFn:
        """The guided model function of the loop: classifier-free guidance (Ho & Salimans 2022),
        ``uncond + s (cond - uncond)``; s = 1 is the conditional and s = 0 the unconditional
        prediction alone, each in one pass (so is any s when prompt and negative are the same)."""
        if self.guidance_embedded or c.same():  # nothing for classifier-free guidance to scale
            return self.denoiser(c, batch, ("cond",), guidance_scale)
        if guidance_scale in (0.0, 1.0):
            part = "cond" if guidance_scale == 1.0 else "uncond"
            return self.denoiser(c, batch, (part,), guidance_scale)
        both = self.denoiser(c, batch, ("uncond", "cond"), guidance_scale)
        return classifier_free_guidance(both, guidance_scale)

    @staticmethod
    def stack(
        c: Conditioning, batch: int, parts: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The context (P * B, L, D) and added inputs (P * B, ...) of ``parts``, in order."""

        def rep(x: torch.Tensor) -> torch.Tensor:
            return x.expand(batch, *x.shape[1:])

        ctx = torch.cat([rep(c.cond if p == "cond" else c.uncond) for p in parts])
        added = {
            k: torch.cat([rep(v if p == "cond" else c.added_uncond[k]) for p in parts])
            for k, v in c.added.items()
        }
        return ctx, added

    # -- the VAE (SPEC 1 steps 1 and 5) ------------------------------------------------------------

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> z = E(x) (posterior mean), ``(z - shift) * scaling``."""
        vae = self.vae
        z = vae.encode(image.to(self.device, vae.dtype)).latent_dist.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * vae.config.scaling_factor).to(self.dtype)

    @staticmethod
    def decode_with(vae: Any, z: torch.Tensor) -> torch.Tensor:
        """x = D(z): (B, C, h, w) scaled latents -> (B, 3, H, W) in [-1, 1]; differentiable, so
        background reconstruction can tune a copy of the decoder (paper 4.2)."""
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        param = next(vae.parameters())  # on "meta" under sequential offload: keep z's device
        z = z.to(dtype=param.dtype) if param.device.type == "meta" else z.to(param)
        return vae.decode(z / vae.config.scaling_factor + shift, return_dict=False)[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) images in [0, 1], ``chunk`` at a time."""
        parts = []
        for part in z.split(chunk):
            checkpoint("decoding")  # the caller's Cancel or time limit (blendedit.frame.stop)
            parts.append(self.decode_with(self.vae, part).float())
        return (torch.cat(parts) / 2 + 0.5).clamp(0, 1)

    # -- the diffusers reference (SPEC 5) ----------------------------------------------------------

    def reference_options(self) -> dict[str, Any]:
        """Constructor arguments of the reference pipeline besides its parts and scheduler."""
        return {}

    def inpaint_reference(self, scheduler: Any) -> Any:
        """diffusers' inpaint pipeline of this family on these components (a 4-channel model
        blends like BLD, SPEC 5), for parity tests, ``bench`` and ``eval``."""
        if not self.reference_pipeline:
            raise InputError(
                f"methods: diffusers has no inpaint pipeline for {self.title} models; compare "
                "without diffusers-inpaint"
            )
        return self.diffusers_pipeline(self.reference_pipeline, scheduler)

    def diffusers_pipeline(self, name: str, scheduler: Any) -> Any:
        """diffusers' pipeline class ``name`` (the inpaint reference, the ``timing_pipeline``) on
        these components, ``scheduler`` and :meth:`reference_options`."""
        import diffusers

        texts = {k: getattr(self, k) for k in TEXT_PARTS if hasattr(self, k)}
        parts = {"vae": self.vae, self.denoiser_name: self.unet, **texts}
        return getattr(diffusers, name)(**parts, scheduler=scheduler, **self.reference_options())

    def reference_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents of the loop -> the timing pipeline's own latents (those its
        step callbacks see); as they are by default."""
        return z

    def reference_latents(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents of the loop -> the timing pipeline's ``latents`` argument; as
        they are by default (the pipeline packs them itself)."""
        return z

    def reference_guidance(self, guidance_scale: float) -> float:
        """blendedit's guidance scale -> the timing pipeline's ``guidance_scale``; the same by
        default."""
        return guidance_scale

    def reference_embeddings(self, prompt: str, negative: str, n: int) -> dict[str, Any] | None:
        """The reference pipeline's prompt arguments as this family's own embeddings, for ``n``
        images; None where the pipeline takes the text."""
        return None

    def reference_prompt(
        self, prompt: str, negative: str, n: int, embeddings: bool = False
    ) -> dict[str, Any]:
        """The prompt arguments of the reference pipeline for ``n`` images: the text, or with
        ``embeddings`` the family's own embeddings where it gives them (``bench``: encoded inside
        the timed call)."""
        if embeddings and (given := self.reference_embeddings(prompt, negative, n)) is not None:
            return given
        return {"prompt": prompt, "negative_prompt": negative or None, "num_images_per_prompt": n}

    @staticmethod
    def reference_inpaint(
        pipe: Any, prompt: dict[str, Any], image: Any, mask_image: Any, size: Size, **call: Any
    ) -> Any:
        """One call of the reference pipeline at the working ``size`` (W, H); ``call``: strength,
        num_inference_steps, guidance_scale, generator, output_type, ... (an ``eta`` only where the
        pipeline takes one: SD3/FLUX do not)."""
        if "eta" in call and "eta" not in inspect.signature(pipe.__call__).parameters:
            call.pop("eta")
        w, h = size
        if hasattr(image, "resize") and tuple(image.size) != (w, h):  # a PIL photo
            # at the working size first: ZImageInpaintPipeline and Flux2KleinInpaintPipeline
            # resize the mask to (w, h) but encode the image as given; Lanczos, as diffusers'
            # image processor resizes for the others
            image = image.resize((w, h), Image.LANCZOS)
        return pipe(**prompt, image=image, mask_image=mask_image, height=h, width=w, **call)

    @contextmanager
    def keeping_vae_dtype(self) -> Iterator[None]:
        """Around reference calls: diffusers' SDXL pipeline casts a force_upcast VAE back to the
        UNet's dtype after its call; the editor shares it and keeps it in float32 (fp16 overflows)."""
        try:
            yield
        finally:
            self.vae.to(self.vae_dtype_for(self.dtype))
