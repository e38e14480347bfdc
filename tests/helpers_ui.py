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
