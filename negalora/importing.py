"""Importing image files into the store, refusing what cannot be decoded safely."""

from dataclasses import dataclass
from pathlib import Path

from negalora.image_files import IMAGE_SUFFIXES, ImageRefused, probe
from negalora.store import Store, StoredImage


@dataclass(frozen=True)
class Refused:
    path: Path
    reason: str


def expand_paths(paths: list[Path]) -> tuple[list[Path], list[Refused]]:
    """Files as given, folders walked recursively for image files."""
    files, refused = [], []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            refused.append(Refused(p, "no such file or folder"))
    return files, refused


def import_files(
    store: Store, paths: list[Path], *, reject: bool = False, reasons: tuple[str, ...] = ()
) -> tuple[list[StoredImage], list[Refused]]:
    files, refused = expand_paths(paths)
    done: list[StoredImage] = []
    for f in files:
        try:
            width, height = probe(f)  # decodes all of it: truncated files, bombs, PSD renamed .png fail
            data = f.read_bytes()
        except ImageRefused as exc:
            refused.append(Refused(f, exc.reason))
            continue
        except OSError as exc:
            refused.append(Refused(f, f"cannot read ({exc.strerror or exc})"))
            continue
        suffix = f.suffix.lower() if f.suffix.lower() in IMAGE_SUFFIXES else ".img"
        done.append(store.add_imported(data, suffix, width, height, f.name))
    if reject and done:
        store.rate([d.id for d in done], "reject", reasons)
    return done, refused
