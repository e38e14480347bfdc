"""What a run trains on, made once and cached: each image's latents (and its mirror's), the class
images of prior preservation, and the embeddings of every caption."""

import hashlib
from collections.abc import Callable

from negalora.atomic import atomic_write_bytes
from negalora.cancel import CancelToken
from negalora.home import Home
from negalora.image_files import load_rgb
from negalora.models.loader import LoadedModel
from negalora.prompts import Conditioner
from negalora.train.buckets import make_buckets, nearest_bucket
from negalora.train.cache import LatentCache, Sample, TextCache
from negalora.train.checkpoints import png, render
from negalora.train.config import TrainConfig


def prepare_samples(
    model: LoadedModel, home: Home, config: TrainConfig, images, cancel: CancelToken, emit: Callable[[dict], None]
) -> tuple[list[list[Sample]], list[list[Sample]], dict]:
    """Latents for every image (and its mirror when flipping), the class images' latents when
    preserving the prior, and embeddings for every caption."""
    pipe = model.pipe
    resolution = config.resolution or model.native_size
    step = 64 if resolution >= 512 else 8
    buckets = make_buckets(resolution, step)
    latents = LatentCache(home.cache, model.sha256)
    texts = TextCache(home.cache, model.sha256)
    samples: list[list[Sample]] = []
    for n, img in enumerate(images):
        cancel.raise_if_cancelled()
        variants = []
        bucket = nearest_bucket(img.width, img.height, buckets)
        for flip in (False, True) if config.flip else (False,):
            variants.append(
                latents.get(pipe.vae, lambda p=img.path: load_rgb(p), img.sha256, bucket, flip, img.caption)
            )
        samples.append(variants)
        emit({"type": "caching", "done": n + 1, "total": len(images)})
    conditioner = Conditioner(pipe)
    prior = []
    if config.prior_preservation:
        prior = class_samples(model, home, config, len(images), latents, conditioner, cancel, emit)
    # "" too: a caption longer than 75 tokens makes a longer embedding, and a batch that mixes
    # lengths is padded with the empty prompt's chunk, as Compel pads.
    captions = {s[0].caption for s in samples + prior} | {""}
    text = {c: texts.get(conditioner, c) for c in sorted(captions)}
    return samples, prior, text


def class_samples(
    model: LoadedModel,
    home: Home,
    config: TrainConfig,
    n_images: int,
    latents: LatentCache,
    conditioner,
    cancel: CancelToken,
    emit: Callable[[dict], None],
) -> list[list[Sample]]:
    """Class images from the base model (no LoRA yet), made once and kept in the cache."""
    size = config.resolution or model.native_size
    count = config.class_images or n_images
    key = hashlib.sha256(f"{config.class_prompt}|{size}|{config.class_steps}".encode()).hexdigest()[:16]
    folder = home.cache / "class" / model.sha256[:16] / key
    out = []
    for k in range(count):
        cancel.raise_if_cancelled()
        path = folder / f"{k:05d}.png"
        if not path.exists():
            image = render(model, conditioner, config.class_prompt, "", seed=k, steps=config.class_steps, size=size)
            atomic_write_bytes(path, png(image))
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        load = lambda p=path: load_rgb(p)  # noqa: E731
        out.append([latents.get(model.pipe.vae, load, sha, (size, size), False, config.class_prompt)])
        emit({"type": "class_images", "done": k + 1, "total": count})
    return out
