"""Caches of what the frozen parts of SDXL compute: VAE latents per image and bucket, text-encoder
outputs per caption. Computed once, kept on disk under <home>/cache, keyed by the model's hash,
the image's pixel hash, the bucket and the flip, so a second run (or a resume) encodes nothing."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from negalora.atomic import atomic_write_bytes
from negalora.safetensors_check import check_safetensors


@dataclass
class Sample:
    latents: torch.Tensor  # [4, h/8, w/8] fp32, already multiplied by the VAE's scaling factor
    time_ids: torch.Tensor  # [6]: original size, crop top-left, target size
    caption: str


def _load(path: Path, shapes: dict[str, tuple[int | None, ...]]) -> dict[str, torch.Tensor] | None:
    """A cache entry, or None when it is missing, damaged or not what the cache writes (the file is then
    deleted, to be computed again). ``shapes`` holds each tensor's shape, None for a size not known here."""
    if not path.exists():
        return None
    try:
        check_safetensors(path)  # a hostile header never reaches the library
        data = load_file(str(path))
    except Exception:  # noqa: BLE001 - NegaloraError, SafetensorError, OSError: all mean "compute it again"
        data = None
    if data is None or set(data) != set(shapes) or not all(_fits(data[k], s) for k, s in shapes.items()):
        path.unlink(missing_ok=True)
        return None
    return data


def _fits(t: torch.Tensor, shape: tuple[int | None, ...]) -> bool:
    sizes_match = t.ndim == len(shape) and all(w is None or w == n for n, w in zip(t.shape, shape, strict=False))
    return sizes_match and t.dtype == torch.float32 and bool(torch.isfinite(t).all())


def _latent_shape(vae, bucket) -> tuple[int, int, int]:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # as diffusers' vae_scale_factor
    return (vae.config.latent_channels, bucket[1] // factor, bucket[0] // factor)


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save as save_bytes

    atomic_write_bytes(path, save_bytes({k: v.contiguous() for k, v in tensors.items()}))


class LatentCache:
    def __init__(self, root: Path, model_hash: str):
        self.root = Path(root) / "latents" / model_hash[:16]

    def path(self, sha: str, bucket: tuple[int, int], flip: bool) -> Path:
        return self.root / f"{bucket[0]}x{bucket[1]}" / f"{sha}{'-flip' if flip else ''}.safetensors"

    @torch.no_grad()
    def get(self, vae, load_image, sha: str, bucket, flip: bool, caption: str) -> Sample:
        """The cached latents, or ``load_image()`` encoded and cached (also when the cache file is damaged)."""
        from negalora.train.buckets import prepare

        path = self.path(sha, bucket, flip)
        data = _load(path, {"latents": _latent_shape(vae, bucket), "time_ids": (6,)})
        if data is not None:
            return Sample(data["latents"], data["time_ids"], caption)
        prepared = prepare(load_image(), bucket, flip=flip)
        pixels = prepared.pixels.unsqueeze(0).to(vae.device, vae.dtype)
        # The distribution's mean, not a sample: the cache stays deterministic.
        latents = vae.encode(pixels).latent_dist.mean[0].float().cpu() * vae.config.scaling_factor
        time_ids = prepared.time_ids().float()
        _save(path, {"latents": latents, "time_ids": time_ids})
        return Sample(latents, time_ids, caption)


class TextCache:
    def __init__(self, root: Path, model_hash: str):
        self.root = Path(root) / "text" / model_hash[:16]

    def get(self, conditioner, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt embeds [77, D], pooled [P]) for a caption, fp32 on the CPU."""
        key = hashlib.sha256(caption.encode("utf-8")).hexdigest()
        path = self.root / f"{key}.safetensors"
        data = _load(path, {"embeds": (None, None), "pooled": (None,)})
        if data is not None:
            return data["embeds"], data["pooled"]
        cond = conditioner.encode(caption, "")
        embeds, pooled = cond.embeds[0].float().cpu(), cond.pooled[0].float().cpu()
        _save(path, {"embeds": embeds, "pooled": pooled})
        return embeds, pooled
