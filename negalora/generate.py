"""Generation: a batch request becomes recipes (one per image, seeds assigned), each recipe is
rendered with Compel conditioning, and finished images go into the store.

Progress is reported per step through a callback; a cancel token is checked after every step and
a cancelled image is thrown away (the pipeline is stopped before it decodes anything).
"""

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from negalora import faults
from negalora.api import MAX_SEED, GenerateRequest, check_lora_file, check_request, check_size
from negalora.cancel import CancelToken
from negalora.errors import Cancelled, NegaloraError
from negalora.hashing import HashCache
from negalora.lora_passes import NEGATIVE, negative_pass, text_encoder_lora_off
from negalora.models.loader import LoadedModel
from negalora.pngmeta import png_bytes
from negalora.prompts import Conditioner, Conditioning, RefinerConditioner
from negalora.recipe import Recipe
from negalora.schedulers import canonical_name, make_scheduler
from negalora.store import Store
from negalora.store.db import StoredImage

LORA_ADAPTER = "negalora_lora"


@dataclass(frozen=True)
class Progress:
    image_index: int  # 0-based index in the batch
    image_total: int
    step: int  # steps finished for this image
    steps: int


@dataclass
class _LoraState:
    path: str = ""
    sha256: str = ""


def _negative_only(recipe: Recipe) -> bool:
    return bool(recipe.lora_path) and recipe.lora_passes == NEGATIVE


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
    _conditioner: Conditioner | None = field(default=None, init=False)
    _refiner_conditioner: RefinerConditioner | None = field(default=None, init=False)
    _lora: _LoraState = field(default_factory=_LoraState, init=False)
    _schedulers: dict = field(default_factory=dict, init=False)
    _lora_applied: tuple = field(default=("", 1.0), init=False)

    def __post_init__(self):
        self._conditioner = Conditioner(self.model.pipe)
        if self.model.refiner is not None:
            self._refiner_conditioner = RefinerConditioner(self.model.refiner)

    # -- planning -------------------------------------------------------------------------

    def plan(self, request: GenerateRequest) -> list[Recipe]:
        """Validate a request and expand it into one recipe per image (prompt-major, seed, seed+1, …)."""
        check_request(request)
        width = request.width or self.model.native_size
        height = request.height or self.model.native_size
        check_size(width, height)
        scheduler = canonical_name(request.scheduler)
        lora_fields = self._lora_fields(request)
        refiner_fields = {}
        if self.model.vae_name:
            refiner_fields.update(
                vae=self.model.vae_name, vae_hash=self.model.vae_sha256, vae_location=self.model.vae_location
            )
        if request.use_refiner and self.model.refiner is not None:
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
                )
            )
        return recipes

    def _lora_fields(self, request: GenerateRequest) -> dict:
        if not request.lora:
            return {}
        path = Path(request.lora).expanduser()
        check_lora_file(path)
        sha = self._lora_hash(path)
        return {
            "lora": path.stem,
            "lora_path": str(path.resolve()),
            "lora_hash": sha,
            "lora_scale": float(request.lora_scale),
            "lora_passes": request.lora_passes,
        }

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
        state = (recipe.lora_hash, recipe.lora_scale)
        if state != self._lora_applied:
            self._conditioner.clear()  # a LoRA may adapt the text encoders too
            self._lora_applied = state
        pipe = self.model.pipe
        if not recipe.lora_path:
            if self._lora.sha256:
                pipe.unload_lora_weights()
                self._lora = _LoraState()
            return
        if self._lora.sha256 != recipe.lora_hash:
            if self._lora.sha256:
                pipe.unload_lora_weights()
                self._lora = _LoraState()
            try:
                pipe.load_lora_weights(recipe.lora_path, adapter_name=LORA_ADAPTER)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise NegaloraError(
                    f"{recipe.lora_path}: does not fit this model ({str(exc).splitlines()[0]})"
                ) from exc
            self._lora = _LoraState(recipe.lora_path, recipe.lora_hash)
        pipe.set_adapters([LORA_ADAPTER], adapter_weights=[recipe.lora_scale])

    def _conditioning(self, recipe: Recipe) -> Conditioning:
        if _negative_only(recipe):
            return self._split_conditioning(recipe)
        return self._conditioner.encode(recipe.prompt, recipe.negative)

    def _split_conditioning(self, recipe: Recipe) -> Conditioning:
        return split_conditioning(self._conditioner, self.model.pipe, recipe.prompt, recipe.negative)

    @contextmanager
    def _unet_passes(self, negative_only: bool):
        if not negative_only:
            yield
            return
        # The public helper's UNet half (the embeddings come from Compel, already split).
        with negative_pass(self.model.pipe, text_encoders=False):
            yield

    def release_lora(self) -> None:
        """Take any LoRA off the shared pipeline (before training on it)."""
        if self._lora.sha256:
            self.model.pipe.unload_lora_weights()
            self._lora = _LoraState()
        self._lora_applied = ("", 1.0)
        self._conditioner.clear()

    @torch.no_grad()
    def render(
        self,
        recipe: Recipe,
        on_step: Callable[[int], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> Image.Image:
        """Make the image of one recipe; raises Cancelled (and makes nothing) when cancelled."""
        if cancel is not None:
            cancel.raise_if_cancelled()
        pipe = self.model.pipe
        pipe.scheduler = self._scheduler(recipe.scheduler)
        self._apply_lora(recipe)
        negative_only = _negative_only(recipe)
        cond = self._conditioning(recipe)
        done = 0

        def step_end(_pipe, _i, _t, kwargs):
            nonlocal done
            done += 1
            faults.inject("generate_step")
            if on_step is not None:
                on_step(done)
            if cancel is not None:
                cancel.raise_if_cancelled()  # stops before the VAE decodes a half-denoised image
            return kwargs

        use_refiner = bool(recipe.refiner) and self.model.refiner is not None
        generator = torch.Generator("cpu").manual_seed(recipe.seed)
        with self._unet_passes(negative_only):
            out = pipe(
                **cond.pipeline_kwargs(),
                num_inference_steps=recipe.steps,
                guidance_scale=recipe.guidance,
                width=recipe.width,
                height=recipe.height,
                generator=generator,
                callback_on_step_end=step_end,
                denoising_end=recipe.refiner_switch if use_refiner else None,
                output_type="latent" if use_refiner else "np",
            ).images
        if use_refiner:
            refiner = self.model.refiner
            refiner.scheduler = make_scheduler(recipe.scheduler, dict(refiner.scheduler.config))
            rcond = self._refiner_conditioner.encode(recipe.prompt, recipe.negative)
            out = refiner(
                **rcond.pipeline_kwargs(),
                image=out,
                num_inference_steps=recipe.steps,
                denoising_start=recipe.refiner_switch,
                guidance_scale=recipe.guidance,
                generator=generator,
                callback_on_step_end=step_end,
                output_type="np",
            ).images
        return _to_images(out[:1])[0]

    @torch.no_grad()
    def render_batch(self, recipes: list[Recipe], cancel: CancelToken | None = None) -> list[Image.Image]:
        """Several recipes that differ only in prompt, negative and seed, in one pipeline call (A1111's
        "batch size"). Many times faster than one by one for a small model on the CPU; each image
        keeps its own seed's noise, but may differ in the last bit from a one-image render, so
        regenerating it is exact only within 2/255."""
        if not recipes:
            return []
        first = recipes[0]
        shared = ("steps", "guidance", "width", "height", "scheduler", "lora_hash", "lora_scale", "lora_passes")
        for r in recipes[1:]:
            differ = [k for k in shared if getattr(r, k) != getattr(first, k)]
            if differ:
                raise NegaloraError(f"one batch must share its settings; these differ: {', '.join(differ)}")
        if any(r.refiner for r in recipes) and self.model.refiner is not None:
            raise NegaloraError("a batch cannot use the refiner; render those one by one")
        if cancel is not None:
            cancel.raise_if_cancelled()
        pipe = self.model.pipe
        pipe.scheduler = self._scheduler(first.scheduler)
        self._apply_lora(first)
        negative_only = _negative_only(first)
        conds = [self._conditioning(r) for r in recipes]
        if len({c.embeds.shape for c in conds}) > 1:
            raise NegaloraError("prompts of different token lengths cannot share a batch")
        kwargs = {key: torch.cat([c.pipeline_kwargs()[key] for c in conds]) for key in conds[0].pipeline_kwargs()}

        def step_end(_pipe, _i, _t, kw):
            faults.inject("generate_step")
            if cancel is not None:
                cancel.raise_if_cancelled()
            return kw

        with self._unet_passes(negative_only):
            out = pipe(
                **kwargs,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance,
                width=first.width,
                height=first.height,
                generator=[torch.Generator("cpu").manual_seed(r.seed) for r in recipes],
                callback_on_step_end=step_end,
                output_type="np",
            ).images
        return _to_images(out)

    def run(
        self,
        request: GenerateRequest,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[tuple[Recipe, Image.Image]]:
        recipes = self.plan(request)
        total = len(recipes)
        for index, recipe in enumerate(recipes):
            if on_progress is not None:
                on_progress(Progress(index, total, 0, recipe.steps))
            image = self.render(
                recipe,
                on_step=(lambda s, i=index, r=recipe: on_progress(Progress(i, total, min(s, r.steps), r.steps)))
                if on_progress
                else None,
                cancel=cancel,
            )
            yield recipe, image


def split_conditioning(conditioner: Conditioner, pipe, prompt: str, negative: str) -> Conditioning:
    """The positive prompt encoded without the LoRA, the negative with it (when it adapts the text
    encoders; otherwise one encoding serves both)."""
    on = conditioner.encode(prompt, negative)
    with text_encoder_lora_off(pipe) as adapted:
        if not adapted:
            return on
        off = conditioner.encode(prompt, negative, variant="lora-off")
    return Conditioning(off.embeds, off.pooled, on.negative_embeds, on.negative_pooled)


def generate_to_store(
    generator: Generator,
    store: Store,
    request: GenerateRequest,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelToken | None = None,
    on_image: Callable[[StoredImage, Recipe], None] | None = None,
) -> list[tuple[StoredImage, Recipe]]:
    """Generate a batch and store every finished image. A cancel ends the batch early and keeps the
    images already finished; the caller tells a cancel by its token."""
    model = generator.model
    model_id = store.ensure_model(model.name, model.source, model.location, model.sha256)
    done = []
    try:
        for recipe, image in generator.run(request, on_progress, cancel):
            stored = store.add_generated(recipe, model_id, png_bytes(image, recipe))
            done.append((stored, recipe))
            if on_image is not None:
                on_image(stored, recipe)
    except Cancelled:
        pass
    return done


def regenerate(generator: Generator, recipe: Recipe) -> Image.Image:
    """Render a stored recipe again, exactly: same model, VAE, LoRA file, seed and settings."""
    model = generator.model
    if recipe.model_hash != model.sha256:
        raise NegaloraError(
            f"recipe was made with model {recipe.model} ({recipe.model_hash[:10]}); "
            f"the loaded model is {model.name} ({model.sha256[:10]})"
        )
    if recipe.vae_hash != model.vae_sha256:
        raise NegaloraError(f"recipe was made with VAE {recipe.vae or 'of the model'}; load that VAE to remake it")
    if recipe.lora_path:
        path = Path(recipe.lora_path)
        if not path.is_file():
            raise NegaloraError(f"{path}: the recipe's LoRA file is gone")
        check_lora_file(path)  # the file may have been replaced since; hashing reads its header length
        if generator._lora_hash(path) != recipe.lora_hash:
            raise NegaloraError(f"{path}: the LoRA file changed since the image was made")
    return generator.render(recipe)
