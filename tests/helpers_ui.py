"""Shared setup for the window tests: a home with stored images, no model needed."""

from PIL import Image

from negalora.pngmeta import png_bytes
from negalora.recipe import Recipe
from negalora.store import Store

COLORS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "cyan", "magenta"]


def seed_home(home, n=6):
    store = Store(home)
    ids = []
    for i in range(n):
        recipe = Recipe(f"a {COLORS[i % 10]} circle {i}", "", 100 + i, 5, 7.0, 32, 32, "Euler", "demo", "ab" * 32)
        ids.append(store.add_generated(recipe, None, png_bytes(Image.new("RGB", (32, 32), COLORS[i % 10]), recipe)).id)
    store.close()
    return ids


def add_rerender(home, source_id, strength=0.5, seed=900, color="pink"):
    """A stored img2img result of ``source_id``: its recipe names the source's sha256 and the strength."""
    store = Store(home)
    try:
        source = store.image(source_id)
        recipe = Recipe(
            f"a re-render of {source_id}",
            "wrong",
            seed,
            5,
            7.0,
            32,
            32,
            "Euler",
            "demo",
            "ab" * 32,
            init_image=source["sha256"],
            strength=strength,
        )
        return store.add_generated(recipe, None, png_bytes(Image.new("RGB", (32, 32), color), recipe)).id
    finally:
        store.close()
