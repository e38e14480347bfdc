"""``negalora regenerate``: make a stored image again from its recipe and compare the pixels."""

from pathlib import Path

from negalora.cli.common import add_common, emit
from negalora.errors import NegaloraError

BATCH_TOLERANCE = 2  # /255


def add_parsers(sub) -> None:
    rg = sub.add_parser("regenerate", help="make a stored image again from its recipe and check the pixels")
    rg.add_argument("image_id", type=int, metavar="IMAGE_ID")
    rg.add_argument("--device", metavar="D", help="cpu, cuda or mps")
    add_common(rg)


def cmd_regenerate(args) -> int:
    from negalora.device import choose_placement
    from negalora.generate import Generator, regenerate
    from negalora.hashing import HashCache
    from negalora.home import resolve_home
    from negalora.models.loader import load_model
    from negalora.pngmeta import png_bytes
    from negalora.store import Store

    home = resolve_home(args.home)
    with Store(home) as store:
        recipe = store.recipe(args.image_id)
        if recipe is None:
            raise NegaloraError(f"image {args.image_id}: has no recipe (imported, or no such image)")
        original = store.image(args.image_id)
        model = load_model(
            recipe.model_location,
            home,
            choose_placement(args.device),
            vae=recipe.vae_location or None,
            refiner=recipe.refiner_location or None,
        )
        hashes = HashCache(home.cache / "hashes.json")
        image = regenerate(Generator(model, hashes), recipe, store)  # the store holds an init image
        stored = store.add_generated(
            recipe, store.ensure_model(model.name, model.source, model.location, model.sha256), png_bytes(image, recipe)
        )
    identical = stored.sha256 == original["sha256"]
    diff = 0 if identical else _max_pixel_diff(Path(original["path"]), stored.path)
    # one image per call is held to identical pixels; an image of a batch is rendered again in a batch
    # of the same size, which on the CPU gives the same pixels, and is held to 2/255 (GPU kernels may
    # pick other algorithms from one call to the next)
    tolerance = 0 if recipe.batch_size == 1 else BATCH_TOLERANCE
    matches = diff is not None and diff <= tolerance
    held = "identical pixels" if tolerance == 0 else f"{tolerance}/255 (made in a batch of {recipe.batch_size})"
    if identical:
        said = "identical pixels"
    elif diff is None:
        said = f"#{args.image_id}'s file cannot be read to compare"
    else:
        said = f"at most {diff}/255 from #{args.image_id}" + ("" if matches else ", outside what it is held to")
    emit(
        args,
        {
            "id": stored.id,
            "path": str(stored.path),
            "identical": identical,
            "original_id": args.image_id,
            "max_pixel_diff": diff,
            "held_to": held,
            "matches": matches,
        },
        [f"#{stored.id}  {stored.path}  ({said}; held to {held})"],
    )
    return 0


def _max_pixel_diff(a: Path, b: Path) -> int | None:
    import numpy as np
    from PIL import Image

    try:
        with Image.open(a) as ia, Image.open(b) as ib:
            x, y = np.asarray(ia.convert("RGB"), dtype=np.int16), np.asarray(ib.convert("RGB"), dtype=np.int16)
    except OSError:
        return None
    return int(np.abs(x - y).max()) if x.shape == y.shape else 255


COMMANDS = {"regenerate": cmd_regenerate}
