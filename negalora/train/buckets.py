"""Aspect-ratio buckets and SDXL's size conditioning ("time ids"), as kohya sd-scripts and diffusers do.

Training every image at 1024x1024 would crop a 3:2 photo hard; buckets keep roughly the same pixel
count at several shapes, and SDXL is told the original size and the crop so it learns what a crop is.
"""

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


def make_buckets(resolution: int, step: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) buckets: sides multiples of ``step``, area at most ``resolution**2``.

    For each width the tallest height that fits the area is taken, and every bucket also appears
    transposed (kohya's ``make_bucket_resolutions``); only shapes within ``max_ratio`` either way are kept.
    """
    if resolution <= 0 or step <= 0 or resolution % step:
        raise ValueError(f"resolution {resolution} must be a positive multiple of step {step}")
    if max_ratio < 1:
        raise ValueError(f"max_ratio {max_ratio} must be at least 1")
    area = resolution * resolution
    found = {(resolution, resolution)}
    for width in range(step, int(resolution * max_ratio) + 1, step):
        height = area // width // step * step
        if height >= step and max(width / height, height / width) <= max_ratio:
            found |= {(width, height), (height, width)}
    return sorted(found, key=lambda wh: (wh[0] / wh[1], wh[0]))


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket closest in aspect ratio (log-ratio distance, so 2:1 and 1:2 are equally far from 1:1)."""
    if not buckets:
        raise ValueError("no buckets")
    want = math.log(width / height)
    # Ties go to the larger bucket, then the wider one, so the choice never depends on list order.
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - want), -b[0] * b[1], -b[0]))


@dataclass(frozen=True)
class Prepared:
    pixels: torch.Tensor  # float32 CHW in [-1, 1], the size of the bucket
    original_size: tuple[int, int]  # (height, width) of the source image
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image
    target_size: tuple[int, int]  # (height, width) of the bucket

    def time_ids(self) -> torch.Tensor:
        """SDXL's added time ids in the order diffusers' pipeline builds them (``_get_add_time_ids``)."""
        return torch.tensor([*self.original_size, *self.crop_top_left, *self.target_size], dtype=torch.float32)


def prepare(
    image: Image.Image,
    bucket: tuple[int, int],
    *,
    flip: bool = False,
    center_crop: bool = True,
    rng: random.Random | None = None,
) -> Prepared:
    """Resize (LANCZOS) to cover ``bucket``, crop to it, optionally mirror; pixels in [-1, 1].

    Flipping follows diffusers' train_dreambooth_lora_sdxl.py: it flips the resized image and then
    crops, so ``crop_top_left`` is the crop actually taken from the image the model sees. Mirroring
    after the crop gives the same pixels; the left edge is mirrored to ``resized width - left - width``
    so the number stays true (diffusers' train_text_to_image_sdxl.py writes ``width - left`` there,
    using the cropped width, which is not a position in the resized image).
    """
    if image.mode != "RGB":
        raise ValueError(f"prepare() wants an RGB image, got {image.mode}")
    bw, bh = bucket
    resized = _cover(image, bw, bh)
    top, left = _crop_origin(resized.size, bucket, center_crop, rng)
    out = resized.crop((left, top, left + bw, top + bh))
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = resized.width - left - bw
    return Prepared(
        pixels=_to_tensor(out),
        original_size=(image.height, image.width),
        crop_top_left=(top, left),
        target_size=(bh, bw),
    )


def _cover(image: Image.Image, bw: int, bh: int) -> Image.Image:
    """The smallest LANCZOS resize that covers the bucket on both sides."""
    scale = max(bw / image.width, bh / image.height)
    size = (max(bw, round(image.width * scale)), max(bh, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def _crop_origin(
    size: tuple[int, int], bucket: tuple[int, int], center: bool, rng: random.Random | None
) -> tuple[int, int]:
    (w, h), (bw, bh) = size, bucket
    if center:
        # torchvision's CenterCrop rounding, which the diffusers scripts use
        return int(round((h - bh) / 2.0)), int(round((w - bw) / 2.0))
    if rng is None:
        raise ValueError("a random crop needs an rng (pass random.Random(seed) for a repeatable run)")
    return rng.randint(0, h - bh), rng.randint(0, w - bw)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32)  # HWC, 0-255
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).contiguous()
