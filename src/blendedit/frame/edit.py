"""The edit frame that every method runs through: orient -> region -> core -> paste -> measure.

1. the photo as the user sees it (:mod:`blendedit.frame.photo`: orientation, colour profile, bit depth)
   and its mask (oriented the same way, grown, blurred, binarised unless soft);
2. the working region (:mod:`blendedit.frame.region`): a crop around the mask or the whole photo, at the
   core's working size;
3. the method's core (:class:`EditCore`): prepare, generate (in chunks, halving on out-of-memory),
   decode; the frame ranks the candidates with the core's CLIP (BLD paper 4.4);
4. background (BLD paper 4.2) and paste-back at exactly the crop's pixel box, in the photo's own
   colour space and bit depth: pixels the edit leaves as they were are the input's own;
5. metrics on the crop (of the result as written, seen in sRGB), exact for the whole photo.

The frame imports no method: a core is anything with the small protocol below. Everything after
decoding touches only the crop (no full-photo float arrays).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from blendedit.config import FrameConfig, resolve_seeds
from blendedit.errors import BlendEditError, InputError
from blendedit.frame import masks as M
from blendedit.frame import reconstruct as R
from blendedit.frame.judges import Judges, Ranking, rank_inputs
from blendedit.frame.metrics import region_background_report
from blendedit.frame.photo import Photo, orient_like, read_photo
from blendedit.frame.ranking import ClipScorer, rank_order
from blendedit.frame.region import Region, Size, choose_region
from blendedit.frame.results import Candidate, EditResult, ProgressFn, Timings
from blendedit.frame.stop import StopFn, checkpoint, stopping
from blendedit.io import open_image, pil_to_tensor

logger = logging.getLogger(__name__)

Tick = Callable[[int], None]  # report n more denoising steps done


@dataclass
class Work:
    """What the frame hands a core: the region at the working size."""

    x: torch.Tensor  # (1, 3, H, W) in [-1, 1], float32 on the CPU
    mask: torch.Tensor  # (1, 1, H, W) in [0, 1]: area coverage, or (soft) per-pixel strength
    soft: bool  # grey levels are per-pixel strengths (Differential Diffusion), not coverage
    prompt: str
    source_size: Size | None = None  # (W, H) of the region in photo pixels (SDXL's original size)


@dataclass
class Generated:
    """A chunk of candidates from a core."""

    samples: torch.Tensor  # (b, ...) what ``decode`` and ``reconstruct`` take
    frames: list[torch.Tensor] = field(default_factory=list)  # per candidate (steps, ...)


class Prepared(Protocol):
    num_steps: int  # denoising steps per candidate
    latent_space: bool  # samples are latents, kept per candidate (``Candidate.latent``)


class EditCore(Protocol):
    """A method's core, driven by the frame."""

    name: str
    clip: ClipScorer | None

    @property
    def device(self) -> torch.device: ...

    def full_work_size(self, size: Size, cfg: Any) -> Size:
        """Working (W, H) for the whole photo of ``size``."""

    def work_shapes(self, cfg: Any) -> list[Size]:
        """Working shapes a crop may take (its aspect is expanded to the nearest)."""

    def prepare(self, work: Work, cfg: Any) -> Prepared:
        """Text, encoding, masks and schedule: everything shared by the candidates."""

    def generate(
        self, state: Any, seeds: list[int], cfg: Any, tick: Tick, keep_process: bool
    ) -> Generated:
        """Denoise one chunk of candidates, one seed each."""

    def decode(self, state: Any, samples: torch.Tensor) -> torch.Tensor:
        """Samples -> (N, 3, H, W) images in [0, 1] at the working size."""

    def reconstruct(
        self, state: Any, sample: torch.Tensor, decoded: torch.Tensor, cfg: Any
    ) -> torch.Tensor:
        """Background "latent" / "decoder" (paper 4.2): (1, 3, H, W) in [0, 1], working size."""

    def describe(self, state: Any, cfg: Any) -> dict[str, Any]:
        """Extra ``EditResult`` fields ("settings", "timesteps", "latent_masks", ...)."""


class FrameMethod:
    """The call every method shares: ``editor(image, mask, prompt, seed=0)`` -> :class:`EditResult`.
    A method sets ``config_class`` and ``method`` and implements :class:`EditCore`."""

    config_class: type[FrameConfig] = FrameConfig
    method: str = ""
    judges: Judges | None = None  # the ranking judges (--rank); None: the defaults, when asked

    def __call__(
        self,
        image: Any,
        mask: M.MaskInput,
        prompt: str,
        *,
        config: FrameConfig | None = None,
        seed: int | None = None,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        progress: bool | ProgressFn = False,
        return_process: bool = False,
        stop: StopFn | None = None,
        time_limit: float | None = None,
        **settings: Any,
    ) -> EditResult:
        """Edit the masked region of ``image`` (a path, PIL image or :class:`Photo`) to follow
        ``prompt``. An empty prompt asks for no content: the region is filled from what its
        surroundings suggest (object removal; ``negative_prompt`` then says what to steer away
        from); its candidates are not ranked (CLIP has nothing to compare them with) and come in
        generation order.

        Settings come from ``config`` (the method's config class, e.g. a preset) overridden by
        keyword arguments of the same names (``num_images=4, region="crop", ...``). Randomness only
        through ``seed`` (default ``config.seed``), explicit ``seeds``, or a ``generator``; each
        candidate draws its noise from its own seed, so any one result can be regenerated alone.
        ``return_process`` keeps each step's one-step clean estimate for the best result.
        ``stop`` (called at every checkpoint: True stops the edit with
        :class:`~blendedit.errors.Cancelled`) and ``time_limit`` (seconds;
        :class:`~blendedit.errors.TimeLimitError`) stop it in any stage (:mod:`.stop`).
        """
        cfg = (config or self.default_config()).replace(**settings).validate()
        self.check(cfg)
        if seed is None and seeds is None and generator is None:
            seed = cfg.seed
        seed_list = resolve_seeds(cfg.num_images, seed, seeds, generator)
        with stopping(stop, time_limit):  # every checkpoint of the edit asks it (.stop)
            return run_edit(
                self,  # type: ignore[arg-type]
                image, mask, prompt, cfg, seed_list,
                progress=progress, return_process=return_process, method=self.method,
            )  # fmt: skip

    def check(self, cfg: Any) -> None:
        """Refuse settings this method's loaded models cannot serve (one line)."""

    def default_config(self) -> FrameConfig:
        """The settings used when no ``config`` is given (a model family may change some)."""
        return self.config_class()


def read_mask(mask: M.MaskInput, photo: Photo) -> M.MaskLevels | np.ndarray:
    """A mask file or image read once onto the photo as shown (see :class:`~.masks.MaskLevels`);
    an array (already on the photo as shown) as it is."""
    if isinstance(mask, M.MaskLevels | np.ndarray):
        return mask
    img = orient_like(open_image(mask, "mask"), photo)
    return M.MaskLevels(M.mask_levels(img, photo.size))


def photo_mask(mask: M.MaskInput, photo: Photo, cfg: FrameConfig) -> np.ndarray:
    """The mask as uint8 levels (H, W) on the photo as shown: oriented like the photo, grown,
    blurred; 0/255 unless ``soft_mask`` or ``mask_blur``. Rejects empty and full masks."""
    if isinstance(mask, M.MaskLevels):
        levels = 255 - mask.levels if cfg.invert_mask else mask.levels
    elif isinstance(mask, np.ndarray):
        levels = M.array_levels(mask, photo.size, cfg.invert_mask)
    else:
        img = orient_like(open_image(mask, "mask"), photo)
        levels = M.mask_levels(img, photo.size, cfg.invert_mask)
    if not cfg.soft_mask:
        levels = np.where(levels >= M.MASK_THRESHOLD, 255, 0).astype(np.uint8)
    levels = M.refine(levels, cfg.mask_grow, cfg.mask_blur)
    if not cfg.soft_mask:
        M.check_mask(levels >= M.MASK_THRESHOLD)
    elif levels.max() == 0 or levels.min() == 255:  # a soft gradient may touch every pixel
        M.check_mask(levels > 0)
    return levels


def _to_box(image: torch.Tensor, size: Size) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] at the working size -> (h, w, 3) uint8 at the box's (W, H)."""
    if tuple(image.shape[-2:]) != (size[1], size[0]):
        image = F.interpolate(
            image.float(), size=(size[1], size[0]), mode="bicubic", antialias=True
        )
    arr = (image[0].float().clamp(0, 1) * 255).round().to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()


def _sync(device: torch.device) -> None:
    """Wait for the device at a stage boundary, so stage timings are true (never per step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_edit(
    core: EditCore,
    image: Any,
    mask: M.MaskInput,
    prompt: str,
    cfg: FrameConfig,
    seeds: Sequence[int],
    *,
    progress: bool | ProgressFn = False,
    return_process: bool = False,
    method: str = "latent",
) -> EditResult:
    """Edit the masked region of ``image`` with ``core``; see the module docstring. A caller's
    stop scope (:func:`blendedit.frame.stop.stopping`) ends it at the next checkpoint."""
    t_start = time.perf_counter()
    timings = Timings()
    if not isinstance(prompt, str):
        raise InputError(f"prompt: {prompt!r} must be a text")
    if not prompt.strip():  # "fill from the surroundings": removal, or the unguided control
        prompt = ""
    seed_list = list(seeds)

    # 1. The photo as shown, its mask as levels.
    photo = read_photo(image, "image")
    levels = photo_mask(mask, photo, cfg)  # (H0, W0) uint8

    # 2. Working region: the crop box (or whole photo), its working size, the core's inputs.
    region, work, src_box = _working_region(core, photo, levels, cfg, prompt)

    # 3. The core's shared preparation (text, encoding, masks, schedule).
    checkpoint("encoding")
    t0 = time.perf_counter()
    state = core.prepare(work, cfg)
    _sync(core.device)
    timings.encode = time.perf_counter() - t0

    # 4. Denoise in chunks of batch_size; a chunk that does not fit halves the batch.
    t0 = time.perf_counter()
    samples, frames, chunk_size = _denoise(core, state, seed_list, cfg, progress, return_process)
    _sync(core.device)
    timings.denoise = time.perf_counter() - t0

    # 5. Decode to images at the working size.
    checkpoint("decoding")
    t0 = time.perf_counter()
    decoded = core.decode(state, samples)  # (N, 3, H, W) in [0, 1]
    _sync(core.device)
    timings.decode = time.perf_counter() - t0
    # A candidate with NaN or infinite values is dropped and recorded, never a black image.
    samples, decoded, frames, seed_list, failed = _finite_only(samples, decoded, frames, seed_list)

    # 6. Rank by CLIP similarity of the masked result to the prompt (BLD paper 4.4).
    checkpoint("ranking")
    t0 = time.perf_counter()
    ranking = _scores(core, decoded, work, cfg, len(seed_list))
    order = rank_order(None if ranking is None else ranking.score, len(seed_list))
    timings.rank = time.perf_counter() - t0

    # 7. Background and paste-back of the top K, in the crop only.
    t0 = time.perf_counter()
    kept = _Kept(photo, region, levels, src_box, cfg, samples, decoded, ranking, seed_list)
    candidates = [
        kept.candidate(core, state, idx, rank, frames if return_process and rank == 1 else [])
        for rank, idx in enumerate(order[: cfg.keep or len(order)], start=1)
    ]
    timings.background = time.perf_counter() - t0
    timings.total = time.perf_counter() - t_start

    extra = core.describe(state, cfg)
    settings = {
        **cfg.to_dict(),
        **extra.pop("settings", {}),
        "region_used": region.to_dict(),
        "batch_size_used": chunk_size,  # smaller than batch_size after out-of-memory
    }
    return EditResult(
        candidates=candidates,
        prompt=prompt,
        settings=settings,
        working_size=region.work_size,
        input_size=photo.size,
        timings=timings,
        method=method,
        region=region.box,
        failed=failed,
        input_frames=photo.frames,
        **extra,
    )


def _working_region(
    core: EditCore, photo: Photo, levels: np.ndarray, cfg: FrameConfig, prompt: str
) -> tuple[Region, Work, np.ndarray]:
    """Stage 2: the region (crop box or whole photo) at the core's working size, what the core
    gets there (:class:`Work`), and the input in the box as the model sees it (h, w, 3) sRGB."""
    soft = cfg.soft_mask
    region = choose_region(
        levels,
        cfg.region,
        core.full_work_size(photo.size, cfg),
        core.work_shapes(cfg),
        lambda size: core.full_work_size(size, cfg),
        cfg.context,
    )
    box_levels = levels[region.slices]  # (h, w) uint8
    src_box = photo.to_srgb(region.box)  # (h, w, 3) uint8 sRGB, what the model sees
    ww, wh = region.work_size
    src_work = Image.fromarray(src_box)
    if src_work.size != (ww, wh):
        src_work = src_work.resize((ww, wh), Image.Resampling.LANCZOS)
    strength = M.to_tensor(box_levels if soft else box_levels >= M.MASK_THRESHOLD)
    work = Work(
        x=pil_to_tensor(src_work) * 2 - 1,  # (1, 3, H, W)
        # coverage (binary), or each working pixel's strongest strength (soft: 0/1 stays 0/1)
        mask=F.adaptive_max_pool2d(strength, (wh, ww))
        if soft
        else M.resize_mask(strength, (wh, ww)),
        soft=soft,
        prompt=prompt,
        source_size=region.size,
    )
    return region, work, src_box


def _denoise(
    core: EditCore,
    state: Any,
    seeds: list[int],
    cfg: FrameConfig,
    progress: bool | ProgressFn,
    return_process: bool,
) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Stage 4: every candidate's final sample (N, C, h, w), each step's clean estimates when
    asked, and the batch size that fitted (halved after each out-of-memory)."""
    total = len(seeds) * state.num_steps
    bar = tqdm(
        total=total, desc="denoising", unit="step", disable=progress is not True, leave=False
    )
    report = progress if callable(progress) else None
    done_steps = 0

    def tick(n: int) -> None:
        nonlocal done_steps
        checkpoint("denoising")
        done_steps += n
        bar.update(n)
        if report is not None:
            report(done_steps, total)

    chunks: list[torch.Tensor] = []
    frames: list[torch.Tensor] = []
    done, chunk_size = 0, cfg.batch_size
    try:
        while done < len(seeds):
            chunk = seeds[done : done + chunk_size]
            checkpoint("denoising")
            try:
                out = core.generate(state, chunk, cfg, tick, return_process)
            except torch.OutOfMemoryError:
                if chunk_size == 1:
                    raise
                chunk_size = max(1, chunk_size // 2)
                logger.warning("out of memory: continuing with batch_size %d", chunk_size)
                if core.device.type == "cuda":
                    torch.cuda.empty_cache()
                done_steps = done * state.num_steps
                bar.n = done_steps
                continue
            chunks.append(out.samples)
            frames.extend(out.frames)
            done += len(chunk)
    finally:
        bar.close()
    return torch.cat(chunks), frames, chunk_size


def _finite_only(
    samples: torch.Tensor, decoded: torch.Tensor, frames: list[torch.Tensor], seeds: list[int]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[int], list[dict[str, Any]]]:
    """Stage 5's check: the candidates whose final sample and decoded image are finite (samples,
    decoded, per-candidate frames, seeds), and one record (seed, one-line reason) per candidate
    dropped for NaN or infinite values (a model or LoRA with broken weights, an overflow). None
    left is a one-line error."""
    n = len(seeds)
    sample_ok = torch.isfinite(samples.reshape(n, -1)).all(dim=1).cpu()
    decoded_ok = torch.isfinite(decoded.reshape(n, -1)).all(dim=1).cpu()
    if bool((sample_ok & decoded_ok).all()):
        return samples, decoded, frames, seeds, []
    keep, failed = [], []
    for i, seed in enumerate(seeds):
        if sample_ok[i] and decoded_ok[i]:
            keep.append(i)
            continue
        what = "final sample" if not sample_ok[i] else "decoded image"
        reason = f"not finite: its {what} holds NaN or infinite values"
        failed.append({"seed": seed, "reason": reason})
    if not keep:
        shown = ", ".join(str(s) for s in seeds[:8]) + (", ..." if n > 8 else "")
        raise BlendEditError(
            f"edit: every candidate came out not finite (NaN or infinite values; seeds {shown}): "
            "the model or a LoRA may hold broken weights, or float16 overflows (try dtype fp32)"
        )
    for f in failed:
        logger.warning("seed %d: %s; the candidate is dropped", f["seed"], f["reason"])
    idx = torch.tensor(keep)
    kept_frames = [frames[i] for i in keep] if len(frames) == n else frames
    return (
        samples[idx.to(samples.device)],
        decoded[idx.to(decoded.device)],
        kept_frames,
        [seeds[i] for i in keep],
        failed,
    )


def _scores(
    core: EditCore, decoded: torch.Tensor, work: Work, cfg: FrameConfig, n: int
) -> Ranking | None:
    """Stage 6: each candidate's score by the chosen judge (``cfg.ranker``; the papers': CLIP
    similarity of its masked result to the prompt), or None. An empty prompt names nothing to
    compare with (CLIP's embedding of "" is no description of a filled-in background), so only
    the judges that need no prompt (aesthetic) rank its candidates; with none they keep their
    generation order."""
    if not cfg.rank:
        return None
    if cfg.ranker == "clip" and core.clip is None:
        if n > 1:
            logger.warning("no CLIP model loaded: results are not ranked")
        return None
    judges = getattr(core, "judges", None)
    if judges is None:  # the default judges' models, loaded when first asked for
        judges = Judges()
        core.judges = judges  # type: ignore[attr-defined]  # kept: loaded once per editor
    shown = rank_inputs(decoded, work.x, work.mask, work.prompt, core.device)
    return judges.rank(cfg.ranker, cfg.rank_weights, shown, core.clip)


class _Kept:
    """Stage 7 for each kept candidate: its background (BLD paper 4.2) and paste-back in the crop,
    in the photo's own colour space and bit depth, and its metrics."""

    def __init__(
        self,
        photo: Photo,
        region: Region,
        levels: np.ndarray,
        src_box: np.ndarray,
        cfg: FrameConfig,
        samples: torch.Tensor,
        decoded: torch.Tensor,
        ranking: Ranking | None,
        seeds: list[int],
    ):
        box_levels = levels[region.slices]  # (h, w) uint8
        self.binary = (
            box_levels >= M.MASK_THRESHOLD if not cfg.soft_mask else box_levels > 0
        )  # (h, w) bool
        self.alpha = M.paste_alpha(box_levels, cfg.feather, cfg.soft_mask)  # (h, w) float32
        self.native_box = photo.native(region.box)  # (h, w, C) the input's own pixels
        self.measure = _Measure(photo, region, levels, self.binary) if cfg.metrics else None
        self.photo, self.region, self.src_box, self.cfg = photo, region, src_box, cfg
        self.samples, self.decoded, self.ranking, self.seeds = samples, decoded, ranking, seeds

    def candidate(
        self, core: EditCore, state: Any, idx: int, rank: int, frames: list[torch.Tensor]
    ) -> Candidate:
        checkpoint("background")
        region, decoded, samples = self.region, self.decoded, self.samples
        dec = _to_box(decoded[idx : idx + 1], region.size)  # (h, w, 3) uint8 sRGB
        out = _background(core, state, self.cfg, samples[idx : idx + 1],
                          decoded[idx : idx + 1], dec, self.src_box, self.binary, self.alpha,
                          region)  # fmt: skip
        changed = (out != self.src_box).any(axis=-1)  # (h, w): elsewhere the input's own pixels
        patch = self.native_box.copy()
        if changed.any():
            patch[changed] = self.photo.from_srgb(out)[changed]
        process = None
        if frames:
            process = [  # at the box's size, like ``decoded``
                Image.fromarray(_to_box(f[None], region.size))
                for f in core.decode(state, frames[idx])
            ]
        return Candidate(
            patch=patch,
            box=region.box,
            photo=self.photo,
            seed=self.seeds[idx],
            rank=rank,
            score=None if self.ranking is None else float(self.ranking.score[idx]),
            judges={}
            if self.ranking is None
            else {k: float(v[idx]) for k, v in self.ranking.judges.items()},
            decoded=Image.fromarray(dec),
            latent=samples[idx].cpu() if state.latent_space else None,
            process=process,
            metrics=self.measure(patch) if self.measure is not None else {},
        )


def _background(
    core: EditCore,
    state: Any,
    cfg: FrameConfig,
    sample: torch.Tensor,
    decoded: torch.Tensor,
    dec: np.ndarray,
    src: np.ndarray,
    binary: np.ndarray,
    alpha: np.ndarray,
    region: Region,
) -> np.ndarray:
    """SPEC 1 "Background reconstruction" for one kept result, in the crop: (h, w, 3) uint8 sRGB.
    dec: the raw decode at the box size; src: the input there; binary (h, w) the edit region."""
    mode = cfg.background
    if mode == "decoded":
        return dec
    if mode == "stitch":
        return R.composite(dec, src, alpha)
    if mode == "poisson":
        out = R.poisson(dec, src, binary)
    else:  # latent / decoder: the core optimises at the working size
        recon = core.reconstruct(state, sample, decoded, cfg)  # (1, 3, H, W) in [0, 1]
        if not bool(torch.isfinite(recon).all()):  # diverged: never a black image marked done
            raise BlendEditError(
                f"background: the {mode} reconstruction diverged to NaN or infinite values; "
                "lower --recon-lr or use --background stitch"
            )
        out = _to_box(recon, region.size)
    return R.composite(out, src, alpha) if cfg.paste_back else out


class _Measure:
    """Background metrics of a result on a window around the crop, exact for the whole photo
    (outside the crop the output is the input, asserted on the window's ring)."""

    def __init__(self, photo: Photo, region: Region, levels: np.ndarray, binary: np.ndarray):
        pw, ph = photo.size
        x0, y0, x1, y1 = region.box
        g = 11  # one SSIM window beyond the box: every window that sees a change lies inside
        self.win = (max(0, x0 - g), max(0, y0 - g), min(pw, x1 + g), min(ph, y1 + g))
        wx0, wy0 = self.win[:2]
        self.src = photo.to_srgb(self.win)  # (H', W', 3)
        self.inner = (slice(y0 - wy0, y1 - wy0), slice(x0 - wx0, x1 - wx0))
        mask = np.zeros(self.src.shape[:2], dtype=bool)
        mask[self.inner] = binary
        self.mask = mask
        self.photo, self.photo_size = photo, (pw, ph)
        self.mask_pixels = int(binary.sum())

    def __call__(self, patch: np.ndarray) -> dict[str, float]:
        """patch: the result in the box, in the photo's own space (what is written out)."""
        result = self.src.copy()
        result[self.inner] = dataclasses.replace(self.photo, pixels=patch, alpha=None).to_srgb()
        return region_background_report(
            result, self.src, self.mask, self.photo_size, self.mask_pixels
        )
