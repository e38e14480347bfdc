"""Images for store tests without a model: small PNGs that carry a real recipe, distinct per seed."""

import random

from PIL import Image

from negalora.pngmeta import png_bytes
from negalora.recipe import Recipe


def recipe(seed: int) -> Recipe:
    return Recipe(f"a shape {seed}", "", seed, 5, 7.0, 16, 16, "Euler", "demo", "ab" * 32)


def pixels(seed: int) -> Image.Image:
    rnd = random.Random(seed)
    return Image.frombytes("RGB", (16, 16), bytes(rnd.randrange(256) for _ in range(16 * 16 * 3)))


def generated_png(seed: int) -> tuple[Recipe, bytes]:
    r = recipe(seed)
    return r, png_bytes(pixels(seed), r)


def add_generated(store, seed: int) -> int:
    r, png = generated_png(seed)
    return store.add_generated(r, None, png).id
