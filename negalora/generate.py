"""Generation: a batch request becomes recipes (one per image, seeds assigned), each recipe is
rendered with Compel conditioning, and finished images go into the store.

Progress is reported per step through a callback; a cancel token is checked after every step and
a cancelled image is thrown away (the pipeline is stopped before it decodes anything).
"""

import hashlib
import re
import secrets
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from negalora import faults
from negalora.api import MAX_SEED, MAX_SIDE, GenerateRequest, check_lora_file, check_request, check_size
from negalora.cancel import CancelToken
from negalora.errors import Cancelled, NegaloraError
from negalora.hashing import HashCache
from negalora.image_files import ImageRefused, load_rgb
from negalora.lora_passes import (
    BOTH,
    NEGATIVE,
    adapted_text_encoders,
    lora_on_passes,
    negative_pass,
    text_encoder_adapters,
    text_encoder_lora_off,
)
from negalora.models.loader import LoadedModel
from negalora.pngmeta import png_bytes
from negalora.prompts import Conditioner, Conditioning, RefinerConditioner
from negalora.recipe import Recipe
from negalora.schedulers import canonical_name, make_scheduler
from negalora.store import Store, StoredImage

LORA_ADAPTER = "negalora_lora"
NEGATIVE_ADAPTER = "negalora_negative_lora"  # a second LoRA, on the negative pass only


@dataclass(frozen=True)
class Progress:
    image_index: int  # 0-based index of the (first) image being rendered
    image_total: int
    step: int  # steps finished for this image (for every image of its batch)
    steps: int
    batch: int = 1  # images rendered together in this pipeline call, from image_index on


@dataclass
class _LoraState:
    path: str = ""
    sha256: str = ""


def _negative_only(recipe: Recipe) -> bool:
    """All of the recipe's LoRA acts on the negative pass only (the product's default way)."""
    if recipe.negative_lora_path:
        return not recipe.lora_path or recipe.lora_passes == NEGATIVE
    return bool(recipe.lora_path) and recipe.lora_passes == NEGATIVE


def pass_adapters(recipe: Recipe) -> tuple[list[str] | None, list[str] | None] | None:
    """The adapters on the (negative, positive) passes (None: every loaded one, []: none), or None
    when every loaded LoRA acts on both passes (a plain pipeline call)."""
    main, negative = bool(recipe.lora_path), bool(recipe.negative_lora_path)
    if not main and not negative:
        return None
    if _negative_only(recipe):
        return None, []
    if not negative:
        return (None, None) if recipe.lora_passes == BOTH else ([], None)  # positive: off on the negative pass
    if recipe.lora_passes == BOTH:
        return None, [LORA_ADAPTER]
    return [NEGATIVE_ADAPTER], [LORA_ADAPTER]  # positive beside a negative one


def steps_run(recipe: Recipe) -> int:
    """The denoising steps a recipe runs: all of them, or img2img's share (as diffusers and A1111)."""
    return int(recipe.steps * recipe.strength) if recipe.init_image else recipe.steps


def init_size(width: int, height: int, native: int) -> tuple[int, int]:
    """An init image's size as a render size: its own, or its shape at the model's native area when
    it is larger (a 4000 x 3000 photo renders near 1 MP on SDXL, as SDXL's buckets), in whole
    multiples of 8 and at most MAX_SIDE a side."""
    scale = min(1.0, (native * native / (width * height)) ** 0.5, MAX_SIDE / max(width, height))
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)


def _to_images(out) -> list[Image.Image]:
    """The pipeline's float pixels as 8-bit images; NaN pixels are refused, never stored."""
    array = np.asarray(out)
    if not np.isfinite(array).all():
        raise NegaloraError(
            "the model produced NaN pixels (an fp16 VAE overflow?); try --device cpu or an fp16-fix VAE"
        )
    return [Image.fromarray((a.clip(0, 1) * 255).round().astype(np.uint8)) for a in array]


@dataclass
class Generator:
    """Renders recipes on one loaded model. Not thread-safe: one job at a time."""

    model: LoadedModel
    hashes: HashCache | None = None
    _conditioner: Conditioner = field(init=False)
    _refiner_conditioner: RefinerConditioner | None = field(default=None, init=False)
    _lora: _LoraState = field(default_factory=_LoraState, init=False)
    _negative_lora: _LoraState = field(default_factory=_LoraState, init=False)
    _schedulers: dict = field(default_factory=dict, init=False)
    _lora_applied: tuple = field(default=("", 1.0, "", 1.0), init=False)
    _init_images: dict[str, Image.Image] = field(default_factory=dict, init=False)  # sha256 -> RGB
    _img2img: Any = field(default=None, init=False)

    def __post_init__(self):
        self._conditioner = Conditioner(self.model.pipe)
        if self.model.refiner is not None:
            self._refiner_conditioner = RefinerConditioner(self.model.refiner)

    # -- planning -------------------------------------------------------------------------

    def plan(self, request: GenerateRequest) -> list[Recipe]:
        """Validate a request and expand it into one recipe per image (prompt-major, seed, seed+1, …)."""
        check_request(request)
        init_sha, init_fields = "", {}
        native = (self.model.native_size, self.model.native_size)
        if request.init_image:
            init_sha = self.add_init_image(Path(request.init_image))
            native = init_size(*self._init_images[init_sha].size, self.model.native_size)
            init_fields = {"init_image": init_sha, "strength": float(request.strength)}
        width = request.width or native[0]
        height = request.height or native[1]
        check_size(width, height)
        scheduler = canonical_name(request.scheduler)
        lora_fields = self._lora_fields(request)
        refiner_fields = {}
        if self.model.vae_name:
            refiner_fields.update(
                vae=self.model.vae_name, vae_hash=self.model.vae_sha256, vae_location=self.model.vae_location
            )
        if request.use_refiner and self.model.refiner is not None and not init_sha:  # img2img: base only
            refiner_fields.update(  # beside the VAE's fields: a recipe with both records both
                refiner=self.model.refiner_name,
                refiner_hash=self.model.refiner_sha256,
                refiner_location=self.model.refiner_location,
                refiner_switch=request.refiner_switch,
            )
        total = len(request.prompts) * request.count
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 2 - total)
        recipes = []
        for i, prompt in enumerate(p for p in request.prompts for _ in range(request.count)):
            recipes.append(
                Recipe(
                    prompt=prompt,
                    negative=request.negative,
                    seed=(seed + i) % (MAX_SEED + 1),
                    steps=request.steps,
                    guidance=float(request.guidance),
                    width=width,
                    height=height,
                    scheduler=scheduler,
                    model=self.model.name,
                    model_hash=self.model.sha256,
                    model_location=self.model.location,
                    noise_device="cpu",
                    **lora_fields,
                    **refiner_fields,
                    **init_fields,
                )
            )
        return recipes

    def add_init_image(self, path: Path) -> str:
        """Check and decode an init image (as an import: allow-list, bombs, EXIF, alpha, CMYK) and hold
        it for rendering; returns the sha256 of its file, which recipes name it by."""
        path = Path(path).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise NegaloraError(f"{path}: cannot read the init image ({exc.strerror or exc})") from exc
        sha = hashlib.sha256(data).hexdigest()
        if sha not in self._init_images:
            try:
                self._init_images[sha] = load_rgb(path)
            except ImageRefused as exc:
                raise NegaloraError(f"{path}: refused as an init image: {exc.reason}") from exc
            while len(self._init_images) > 64:  # a long re-render job holds only its recent images
                del self._init_images[next(iter(self._init_images))]
        return sha

    def has_init_image(self, sha: str) -> bool:
        return sha in self._init_images

    def _init_for(self, recipe: Recipe) -> Image.Image:
        image = self._init_images.get(recipe.init_image)
        if image is None:
            raise NegaloraError(f"init image {recipe.init_image[:10]}: not loaded (add_init_image first)")
        if image.size != (recipe.width, recipe.height):  # A1111's "Just resize"
            image = image.resize((recipe.width, recipe.height), Image.Resampling.LANCZOS)
        return image

    def _img2img_pipe(self):
        """The img2img pipeline on the loaded components: the same modules, no second copy of weights."""
        if self._img2img is None:
            from diffusers import StableDiffusionXLImg2ImgPipeline

            pipe = self.model.pipe
            self._img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def _lora_fields(self, request: GenerateRequest) -> dict:
        out = {}
        if request.lora:
            path = Path(request.lora).expanduser()
            check_lora_file(path)
            out = {
                "lora": path.stem,
                "lora_path": str(path.resolve()),
                "lora_hash": self._lora_hash(path),
                "lora_scale": float(request.lora_scale),
                "lora_passes": request.lora_passes,
            }
        if request.negative_lora:
            path = Path(request.negative_lora).expanduser()
            check_lora_file(path)
            out |= {
                "negative_lora": path.stem,
                "negative_lora_path": str(path.resolve()),
                "negative_lora_hash": self._lora_hash(path),
                "negative_lora_scale": float(request.negative_lora_scale),
            }
        return out

    # -- rendering ------------------------------------------------------------------------

    def _lora_hash(self, path: Path) -> str:
        """A LoRA's hash as A1111 computes it (the tensor data after the header), cached when possible."""
        from negalora.hashing import sha256_file

        if self.hashes is not None:
            return self.hashes.get(path, skip_safetensors_header=True)
        return sha256_file(path, skip_safetensors_header=True)

    def _scheduler(self, name: str):
        if name not in self._schedulers:
            self._schedulers[name] = make_scheduler(name, self.model.scheduler_config)
        return self._schedulers[name]

    def _apply_lora(self, recipe: Recipe) -> None:
        pipe = self.model.pipe
        owner = getattr(pipe, "_negalora_lora_owner", None)
        if owner is not None and owner() is not self:
            # another Generator on this pipe (a page's, a test's) loaded LoRAs since: what we hold is gone
            self._lora, self._negative_lora = _LoraState(), _LoraState()
            self._lora_applied = ("another's",)  # its conditioning cache is not ours either
        pipe._negalora_lora_owner = weakref.ref(self)
        state = (recipe.lora_hash, recipe.lora_scale, recipe.negative_lora_hash, recipe.negative_lora_scale)
        if state != self._lora_applied:
            self._conditioner.clear()  # a LoRA may adapt the text encoders too
            self._lora_applied = state
        wanted = {}
        if recipe.lora_path:
            wanted[LORA_ADAPTER] = (recipe.lora_path, recipe.lora_hash, recipe.lora_scale)
        if recipe.negative_lora_path:
            wanted[NEGATIVE_ADAPTER] = (
                recipe.negative_lora_path,
                recipe.negative_lora_hash,
                recipe.negative_lora_scale,
            )
        held = {LORA_ADAPTER: self._lora, NEGATIVE_ADAPTER: self._negative_lora}
        stale = [n for n, s in held.items() if s.sha256 and (n not in wanted or wanted[n][1] != s.sha256)]
        # a name we load that is on the pipe but not ours was left by another Generator: it goes too.
        # (Other adapters stay: export's check renders a plain recipe beside its own adapter on purpose.)
        loaded = {a for names in pipe.get_list_adapters().values() for a in names} if wanted else set()
        if stale or (loaded & set(wanted)) - {n for n, st in held.items() if st.sha256}:
            # diffusers unloads every adapter at once: the ones still wanted are loaded again
            pipe.unload_lora_weights()
            self._lora, self._negative_lora = _LoraState(), _LoraState()
            held = {LORA_ADAPTER: self._lora, NEGATIVE_ADAPTER: self._negative_lora}
        if not wanted:
            return
        for name, (path, sha, _) in wanted.items():
            if held[name].sha256 == sha:
                continue
            try:
                pipe.load_lora_weights(path, adapter_name=name)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise NegaloraError(f"{path}: does not fit this model ({str(exc).splitlines()[0]})") from exc
            if name == LORA_ADAPTER:
                self._lora = _LoraState(path, sha)
            else:
                self._negative_lora = _LoraState(path, sha)
        pipe.set_adapters(list(wanted), adapter_weights=[scale for _, _, scale in wanted.values()])

    def _conditioning(self, recipe: Recipe) -> Conditioning:
        passes = pass_adapters(recipe)
        if passes is None or passes == (None, None):
            return self._conditioner.encode(recipe.prompt, recipe.negative)
        if passes == (None, []):
            return self._split_conditioning(recipe)
        return self._pass_conditioning(recipe, *passes)

    def _pass_conditioning(self, recipe: Recipe, negative: list[str] | None, positive: list[str] | None):
        """The prompt encoded with the positive pass's adapters, the negative prompt with the negative
        pass's (one encoding when no LoRA adapts the text encoders)."""
        pipe = self.model.pipe
        if not adapted_text_encoders(pipe):
            return self._conditioner.encode(recipe.prompt, recipe.negative)
        with text_encoder_adapters(pipe, positive):
            pos = self._conditioner.encode(recipe.prompt, recipe.negative, variant=f"positive:{positive}")
        with text_encoder_adapters(pipe, negative):
            neg = self._conditioner.encode(recipe.prompt, recipe.negative, variant=f"negative:{negative}")
        return Conditioning(pos.embeds, pos.pooled, neg.negative_embeds, neg.negative_pooled)

    def _split_conditioning(self, recipe: Recipe) -> Conditioning:
        return split_conditioning(self._conditioner, self.model.pipe, recipe.prompt, recipe.negative)

    @contextmanager
    def _unet_passes(self, recipe: Recipe, pipe):
        """The recipe's LoRA on its guidance passes, for a call of ``pipe`` (the base or img2img)."""
        passes = pass_adapters(recipe)
        if passes is None or passes == (None, None):
            yield
            return
        if passes == (None, []):
            # The public helper's UNet half (the embeddings come from Compel, already split).
            with negative_pass(pipe, text_encoders=False):
                yield
            return
        with lora_on_passes(pipe.unet, *passes, lambda: bool(pipe.do_classifier_free_guidance)):
            yield

    def release_lora(self) -> None:
        """Take any LoRA off the shared pipeline (before training on it)."""
        pipe = self.model.pipe
        if self._lora.sha256 or self._negative_lora.sha256 or any(pipe.get_list_adapters().values()):
            pipe.unload_lora_weights()  # another Generator's too: training starts from the bare model
            self._lora, self._negative_lora = _LoraState(), _LoraState()
        self._lora_applied = ("", 1.0, "", 1.0)
        self._conditioner.clear()

    def render(
        self,
        recipe: Recipe,
        on_step: Callable[[int], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> Image.Image:
        """Make the image of one recipe; raises Cancelled (and makes nothing) when cancelled."""
        return self.render_batch([recipe], on_step, cancel)[0]

    @torch.no_grad()
    def render_batch(
        self,
        recipes: list[Recipe],
        on_step: Callable[[int], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Image.Image]:
        """Several recipes that differ only in prompt, negative and seed, in one pipeline call (A1111's
        "batch size"). Each image keeps its own seed's noise; numerics of a batch may differ in the
        last bit from a one-image render (``regenerate`` renders a batch of the same size again).
        A cancel is checked after every step and stops before anything is decoded."""
        if not recipes:
            return []
        first = recipes[0]
        for r in recipes[1:]:
            differ = [k for k in BATCH_SHARED if getattr(r, k) != getattr(first, k)]
            if differ:
                raise NegaloraError(f"one batch must share its settings; these differ: {', '.join(differ)}")
        if cancel is not None:
            cancel.raise_if_cancelled()
        pipe = self.model.pipe
        pipe.scheduler = self._scheduler(first.scheduler)
        self._apply_lora(first)
        conds = [self._conditioning(r) for r in recipes]
        if len({c.embeds.shape for c in conds}) > 1:
            raise NegaloraError("prompts of different token lengths cannot share a batch")
        done = 0

        def step_end(_pipe: Any, _i: int, _t: Any, kwargs: dict) -> dict:
            nonlocal done
            done += 1
            faults.inject("generate_step")
            if on_step is not None:
                on_step(done)
            if cancel is not None:
                cancel.raise_if_cancelled()  # stops before the VAE decodes a half-denoised image
            return kwargs

        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in recipes]
        if first.init_image:
            images = [self._init_for(r) for r in recipes]  # before any step: a missing one fails first
            i2i = self._img2img_pipe()
            i2i.scheduler = pipe.scheduler
            with self._unet_passes(first, i2i), _vae_slicing(pipe, len(recipes), first.width * first.height):
                out = i2i(
                    **_stacked(conds),
                    image=images,
                    strength=first.strength,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance,
                    generator=generators,
                    callback_on_step_end=step_end,  # pyright: ignore[reportArgumentType] (as below)
                    output_type="np",
                )
            return _to_images(_images_of(out)[: len(recipes)])
        use_refiner = bool(first.refiner) and self.model.refiner is not None
        with self._unet_passes(first, pipe), _vae_slicing(pipe, len(recipes), first.width * first.height):
            out = pipe(
                **_stacked(conds),
                num_inference_steps=first.steps,
                guidance_scale=first.guidance,
                width=first.width,
                height=first.height,
                generator=generators,
                callback_on_step_end=step_end,  # pyright: ignore[reportArgumentType] (diffusers types it (int, int) -> None; it calls (pipe, step, t, kwargs))
                denoising_end=first.refiner_switch if use_refiner else None,
                output_type="latent" if use_refiner else "np",
            )
        out = _images_of(out)
        refiner, rcond = self.model.refiner, self._refiner_conditioner
        if use_refiner and refiner is not None and rcond is not None:
            refiner.scheduler = make_scheduler(first.scheduler, dict(refiner.scheduler.config))
            rconds = [rcond.encode(r.prompt, r.negative) for r in recipes]
            with _vae_slicing(refiner, len(recipes), first.width * first.height):
                out = refiner(
                    **_stacked(rconds),
                    image=out,
                    num_inference_steps=first.steps,
                    denoising_start=first.refiner_switch,
                    guidance_scale=first.guidance,
                    generator=generators,
                    callback_on_step_end=step_end,  # pyright: ignore[reportArgumentType] (as above)
                    output_type="np",
                )
            out = _images_of(out)
        return _to_images(out[: len(recipes)])

    def batch_size_for(self, recipe: Recipe, wanted: int | None) -> int:
        """``wanted``, or the auto batch size for this model, device and image size."""
        if wanted is not None:
            return wanted
        from negalora.device import auto_batch_size, free_memory

        placement = self.model.placement
        free = free_memory(placement.device)
        return auto_batch_size(placement, recipe.width, recipe.height, self.model.unet_channels, free)

    def render_many(
        self,
        recipes: list[Recipe],
        batch_size: int | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[tuple[Recipe, Image.Image]]:
        """Render recipes in order, consecutive ones that can share a pipeline call in batches of up
        to ``batch_size`` (None: auto); each image comes out as soon as its batch is done, with its
        recipe recording the batch it was made in."""
        for batch in self.render_batches(recipes, batch_size, on_progress, cancel):
            yield from batch

    def render_batches(
        self,
        recipes: list[Recipe],
        batch_size: int | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[list[tuple[Recipe, Image.Image]]]:
        """As ``render_many``, a batch at a time."""
        total = len(recipes)
        index = 0
        for group in self._batches(recipes, batch_size):
            n = len(group)
            if n > 1:
                group = [replace(r, batch_size=n, batch_pos=i) for i, r in enumerate(group)]
            run = steps_run(group[0])
            if on_progress is not None:
                on_progress(Progress(index, total, 0, run, n))

            def step(s, i=index, steps=run, n=n):
                if on_progress is not None:
                    on_progress(Progress(i, total, min(s, steps), steps, n))

            images = self.render_batch(group, step if on_progress else None, cancel)
            yield list(zip(group, images, strict=True))
            index += n

    def _batches(self, recipes: list[Recipe], batch_size: int | None) -> Iterator[list[Recipe]]:
        """Consecutive runs of recipes with the same shared settings and prompt length, cut at the
        batch size. Lazy: a group's LoRA is applied only once the group before it is rendered."""
        group: list[Recipe] = []
        size, shared, length = 1, None, None
        for recipe in recipes:
            this = tuple(getattr(recipe, k) for k in BATCH_SHARED)
            # the prompt length last: it applies the recipe's LoRA, which must be the group's
            if group and (this != shared or len(group) >= size or self._prompt_length(recipe) != length):
                yield group
                group = []
            if not group:
                size, shared = self.batch_size_for(recipe, batch_size), this
                length = self._prompt_length(recipe) if size > 1 else None
            group.append(recipe)
        if group:
            yield group

    def _prompt_length(self, recipe: Recipe) -> int:
        """Compel pads prompts to whole 77-token chunks, and ones of different lengths cannot be stacked.
        Encoding is cached, so the batch's render reuses it."""
        self._apply_lora(recipe)
        return int(self._conditioning(recipe).embeds.shape[1])

    def run(
        self,
        request: GenerateRequest,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[tuple[Recipe, Image.Image]]:
        yield from self.render_many(self.plan(request), request.batch_size, on_progress, cancel)


BATCH_SHARED = (
    "steps",
    "guidance",
    "width",
    "height",
    "scheduler",
    "lora_hash",
    "lora_scale",
    "lora_passes",
    "negative_lora_hash",
    "negative_lora_scale",
    "refiner",
    "refiner_switch",
    "strength",  # 0 from noise: text-to-image and img2img never share a call
)


def _stacked(conds: list[Conditioning]) -> dict:
    if len(conds) == 1:
        return conds[0].pipeline_kwargs()
    return {key: torch.cat([c.pipeline_kwargs()[key] for c in conds]) for key in conds[0].pipeline_kwargs()}


SLICE_PIXELS = 1024 * 1024  # a batch of more pixels than one SDXL image decodes one image at a time


def _images_of(output: Any):
    """A pipeline call's images (diffusers types the call as its output class or a tuple)."""
    return output.images


@contextmanager
def _vae_slicing(pipe, n: int, pixels: int):
    """A large batch decodes one image at a time, so the VAE's peak memory stays that of one image
    (a small batch decodes at once: faster, and its memory is no matter)."""
    vae = getattr(pipe, "vae", None)
    if n < 2 or n * pixels <= SLICE_PIXELS or vae is None or not hasattr(vae, "enable_slicing"):
        yield
        return
    before = getattr(vae, "use_slicing", False)
    vae.enable_slicing()
    try:
        yield
    finally:
        if not before:
            vae.disable_slicing()


def split_conditioning(conditioner: Conditioner, pipe, prompt: str, negative: str, lora_on: str = "negative"):
    """The positive prompt encoded without the LoRA, the negative with it (``lora_on="positive"``: the
    other way round) when it adapts the text encoders; otherwise one encoding serves both."""
    on = conditioner.encode(prompt, negative)
    with text_encoder_lora_off(pipe) as adapted:
        if not adapted:
            return on
        off = conditioner.encode(prompt, negative, variant="lora-off")
    if lora_on == "positive":
        return Conditioning(on.embeds, on.pooled, off.negative_embeds, off.negative_pooled)
    return Conditioning(off.embeds, off.pooled, on.negative_embeds, on.negative_pooled)


def generate_to_store(
    generator: Generator,
    store: Store,
    request: GenerateRequest | Sequence[GenerateRequest],
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelToken | None = None,
    on_image: Callable[[StoredImage, Recipe], None] | None = None,
) -> list[tuple[StoredImage, Recipe]]:
    """Generate one request (or several, as one job: Make wrong images) and store every finished
    image as its batch finishes. Consecutive images of the requests that share their settings
    render together, in batches of the first request's batch size. Every request is checked before
    the first image. A cancel ends the job early and keeps the images already finished; the caller
    tells a cancel by its token."""
    requests = [request] if isinstance(request, GenerateRequest) else list(request)
    requests = [with_init_image(store, r) for r in requests]
    recipes = [recipe for r in requests for recipe in generator.plan(r)]
    batch_size = requests[0].batch_size if requests else 1
    model = generator.model
    model_id = store.ensure_model(model.name, model.source, model.location, model.sha256)
    done: list[tuple[StoredImage, Recipe]] = []

    def write(batch: list[tuple[Recipe, Image.Image]]) -> None:
        items = [(recipe, png_bytes(image, recipe)) for recipe, image in batch]
        for stored, (recipe, _) in zip(store.add_generated_many(items, model_id), batch, strict=True):
            done.append((stored, recipe))
            if on_image is not None:
                on_image(stored, recipe)

    # A batch is written (PNG, hashes, one commit) on a thread while the next one renders; only that
    # thread touches the store until the job ends, and each batch's images are announced as soon as
    # they are stored. A failed write stops the job at the next batch.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="negalora-store") as pool:
        writing: Future | None = None
        try:
            for batch in generator.render_batches(recipes, batch_size, on_progress, cancel):
                if writing is not None:
                    writing.result()
                writing = pool.submit(write, batch)
        except Cancelled:
            pass
        except BaseException:
            if writing is not None:  # the batch before is stored; the render's error is the one to report
                try:
                    writing.result()
                except BaseException:  # noqa: BLE001
                    pass
            raise
        if writing is not None:
            writing.result()  # every finished image is stored before the job returns
    return done


def resolve_init_image(store: Store, spec: str) -> tuple[int, Path]:
    """The stored image an init image names: an id ("12", "#12") or an image file, which is checked
    (as an import) and stored first, so its re-renders can be made again and link back to it. A
    refused file is named with its reason, and nothing is written."""
    text = spec.strip()
    path = Path(text).expanduser()
    if re.fullmatch(r"#?\d+", text) and not path.is_file():
        row = store.image(int(text.lstrip("#")))
        return row["id"], Path(row["path"])
    from negalora.image_files import probe

    try:
        width, height = probe(path)
        data = path.read_bytes()
    except ImageRefused as exc:
        raise NegaloraError(f"{path}: refused as an init image: {exc.reason}") from exc
    except OSError as exc:
        raise NegaloraError(f"{path}: cannot read the init image ({exc.strerror or exc})") from exc
    stored = store.add_imported(data, path.suffix.lower(), width, height, path.name)
    return stored.id, stored.path


def with_init_image(store: Store, request: GenerateRequest) -> GenerateRequest:
    """The request with its init image resolved to a stored file, and the prompt the init image was
    made with when the request has none."""
    if not request.init_image:
        return request
    image_id, path = resolve_init_image(store, request.init_image)
    prompts = request.prompts
    if not any(p.strip() for p in prompts):
        own = store.recipe(image_id)
        if own is None:
            raise NegaloraError(f"image {image_id}: has no prompt of its own (imported); give one")
        prompts = (own.prompt,)
    return replace(request, init_image=str(path), prompts=prompts)


def load_init_image(generator: Generator, store: Store, recipe: Recipe) -> None:
    """Hold the init image a stored recipe was made from, found in the store by its hash."""
    if not recipe.init_image or generator.has_init_image(recipe.init_image):
        return
    row = store.image_by_sha(recipe.init_image)
    if row is None:
        raise NegaloraError(f"init image {recipe.init_image[:10]}: no longer in the store (deleted?)")
    if generator.add_init_image(Path(row["path"])) != recipe.init_image:
        raise NegaloraError(f"{row['path']}: the init image's file changed since the image was made")


def regenerate(generator: Generator, recipe: Recipe, store: Store | None = None) -> Image.Image:
    """Render a stored recipe again, exactly: same model, VAE, LoRA file, init image, seed and settings."""
    if store is not None:
        load_init_image(generator, store, recipe)
    model = generator.model
    if recipe.model_hash != model.sha256:
        raise NegaloraError(
            f"recipe was made with model {recipe.model} ({recipe.model_hash[:10]}); "
            f"the loaded model is {model.name} ({model.sha256[:10]})"
        )
    if recipe.vae_hash != model.vae_sha256:
        raise NegaloraError(f"recipe was made with VAE {recipe.vae or 'of the model'}; load that VAE to remake it")
    for where, sha in ((recipe.lora_path, recipe.lora_hash), (recipe.negative_lora_path, recipe.negative_lora_hash)):
        if not where:
            continue
        path = Path(where)
        if not path.is_file():
            raise NegaloraError(f"{path}: the recipe's LoRA file is gone")
        check_lora_file(path)  # the file may have been replaced since; hashing reads its header length
        if generator._lora_hash(path) != sha:
            raise NegaloraError(f"{path}: the LoRA file changed since the image was made")
    if recipe.batch_size > 1:
        # the batch's other images are not in the recipe; a batch of the same size with this one in
        # every place runs the same kernels on the same shapes
        copies = [replace(recipe, batch_pos=i) for i in range(recipe.batch_size)]
        return generator.render_batch(copies)[recipe.batch_pos]
    return generator.render(recipe)
