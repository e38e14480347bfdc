"""Training inputs for tests: small rejected pictures in a home."""

from PIL import Image, ImageDraw

from negalora.store import Store

COLORS = ["red", "green", "blue", "yellow", "white", "orange", "purple", "cyan"]


def seed_rejects(home, n=8):
    """n small pictures (a shape on a background), imported and rejected; returns the open store."""
    store = Store(home)
    ids = []
    for i in range(n):
        im = Image.new("RGB", (64, 64), COLORS[(i + 3) % 8])
        d = ImageDraw.Draw(im)
        d.ellipse((10 + i, 12, 40 + i, 44), fill=COLORS[i % 8])
        path = home.root / f"src{i}.png"
        home.root.mkdir(parents=True, exist_ok=True)
        im.save(path)
        ids.append(store.add_imported(path.read_bytes(), ".png", 64, 64, path.name).id)
    store.rate(ids, "reject", ["artifacts"])
    return store
