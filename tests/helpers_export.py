"""Tiny real training runs on the demo model, for the export tests."""

from PIL import Image, ImageDraw

from negalora.store import Store
from negalora.train.config import TrainConfig
from negalora.train.trainer import Trainer

COLORS = ["red", "green", "blue", "yellow", "white", "orange", "purple", "cyan"]


def seed_rejects(home, n=4) -> Store:
    """n small pictures, imported and rejected; returns the open store."""
    store = Store(home)
    ids = []
    home.root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", (64, 64), COLORS[(i + 3) % 8])
        ImageDraw.Draw(im).ellipse((10 + i, 12, 40 + i, 44), fill=COLORS[i % 8])
        path = home.root / f"src{i}.png"
        im.save(path)
        ids.append(store.add_imported(path.read_bytes(), ".png", 64, 64, path.name).id)
    store.rate(ids, "reject", ["artifacts"])
    return store


def train(home, store, model, **overrides) -> str:
    """A 4-step run with a checkpoint at steps 2 and 4; lr high enough that the LoRA shows in images."""
    config = dict(
        steps=4,
        lr=1e-2,
        batch=2,
        checkpoint_every=2,
        keep_last=0,
        validation_prompts=("a red circle on a blue background",),
        validation_steps=0,
        seed=3,
    )
    config.update(overrides)
    result = Trainer(home, store, model).start(TrainConfig(**config))
    assert result.status == "done", result.message
    return result.run_id
