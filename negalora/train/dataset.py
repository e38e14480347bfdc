"""Collecting the rejected images and checking every one of them before training starts.

Pre-flight decodes each file fully, so a truncated download, a renamed PDF or a decompression bomb is
reported with its reason up front instead of crashing the trainer an hour in.
"""

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image

from negalora.errors import NegaloraError
from negalora.image_files import IMAGE_SUFFIXES, MAX_PIXELS, ImageRefused, load_rgb, to_rgb

__all__ = ["MAX_PIXELS", "load_rgb", "to_rgb"]  # decoding lives in negalora.image_files; kept importable here

# A file that cannot be trained on; ``reason`` is the short reason (the allow-list and decoding checks are
# shared with importing).
PreflightError = ImageRefused


@dataclass(frozen=True)
class Candidate:
    """What to train on, before any decoding."""

    path: Path
    image_id: int | None  # store id, None for files given directly
    reasons: tuple[str, ...] = ()
    caption: str | None = None  # the image's own prompt (kto, dpo); None: the token (dreambooth)
    label: str = ""  # kto: pick (desirable) or reject (undesirable)


@dataclass(frozen=True)
class TrainImage:
    """A file that passed pre-flight."""

    path: Path
    image_id: int | None
    sha256: str  # of the decoded RGB pixels and size, so the same picture in two files is one image
    caption: str
    width: int  # after EXIF orientation
    height: int
    label: str = ""  # kto: pick or reject


@dataclass(frozen=True)
class Refused:
    path: Path
    reason: str


@dataclass
class Preflight:
    images: list[TrainImage] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# -- collecting -----------------------------------------------------------------------------


def collect_rejects(
    store,
    *,
    reasons: Sequence[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    extra: Sequence[Path] = (),
    verdict: str = "reject",
) -> list[Candidate]:
    """Rejected store images (oldest first), filtered by reason tags and time, then the files in ``extra``.

    The time checked is when the image was rejected (the rating's ``updated``), falling back to the
    image's ``created``: "since" is about the culling session, not when the picture was made.
    """
    wanted = {r.casefold() for r in reasons} if reasons else None
    in_window = _time_window(since, until)
    rejected_at = store.rejected_at(verdict)
    out = []
    for row in sorted(store.images(verdict=verdict), key=lambda r: r["id"]):
        tags = tuple(row.get("reasons") or ())
        if wanted is not None and not wanted & {t.casefold() for t in tags}:
            continue
        if not in_window(rejected_at.get(row["id"]) or row["created"]):
            continue
        out.append(Candidate(Path(row["path"]), row["id"], tags))
    return out + [Candidate(p, None) for p in expand_extra(extra)]


def expand_extra(paths: Sequence[Path]) -> list[Path]:
    """Files as given (pre-flight judges them), folders walked recursively for image suffixes.

    Hidden files are skipped in folders: macOS leaves ``._name.png`` resource forks on shared drives.
    A path that does not exist is kept, so pre-flight lists it as refused rather than dropping it silently.
    """
    out: list[Path] = []
    for p in (Path(x).expanduser() for x in paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if _is_image_file(f, p))
        else:
            out.append(p)
    return out


def _is_image_file(f: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in f.relative_to(root).parts)
    return not hidden and f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()


def _time_window(since: str | None, until: str | None):
    """A predicate on ISO timestamps; a date-only ``until`` includes that whole day."""
    lo = _parse_when(since, "since") if since else None
    hi = _parse_when(until, "until") if until else None
    if until and hi is not None and _is_date_only(until):
        hi += timedelta(days=1) - timedelta(microseconds=1)

    def check(stamp: str) -> bool:
        when = _parse_when(stamp, "stored timestamp")
        return (lo is None or when >= lo) and (hi is None or when <= hi)

    return check


def _parse_when(text: str, what: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise NegaloraError(f"{what} {text!r}: not an ISO date or time (e.g. 2025-05-01 or 2025-05-01T14:30)") from exc
    # The store writes UTC; a bare time a person typed means their local clock.
    return when.astimezone(UTC) if when.tzinfo is None else when


def _is_date_only(text: str) -> bool:
    return re.fullmatch(r"\s*\d{4}-\d{2}-\d{2}\s*", text) is not None


# -- decoding -------------------------------------------------------------------------------


def pixel_sha256(im: Image.Image) -> str:
    """Identity of the picture itself: the same pixels saved as PNG and BMP hash the same."""
    h = hashlib.sha256(f"{im.mode} {im.width}x{im.height}\n".encode())
    h.update(im.tobytes())
    return h.hexdigest()


# -- pre-flight -----------------------------------------------------------------------------


def caption_for(candidate: Candidate, token: str = "wrong", with_reasons: bool = False) -> str:
    """``wrong`` or, with reasons, ``wrong, bad hands, blur`` (tags in their stored order, once each)."""
    if not with_reasons:
        return token
    tags = [t.strip() for t in candidate.reasons if t.strip()]
    return ", ".join([token, *dict.fromkeys(tags)])


def preflight(
    candidates: Sequence[Candidate],
    *,
    token: str = "wrong",
    with_reasons: bool = False,
    min_images: int = 5,
    max_pixels: int = MAX_PIXELS,
) -> Preflight:
    """Decode every candidate now; keep one copy of each picture and list every refusal with its reason."""
    result = Preflight()
    first_seen: dict[str, Path] = {}
    for cand in candidates:
        try:
            image = _check_one(cand, token, with_reasons, max_pixels)
        except PreflightError as exc:
            result.refused.append(Refused(cand.path, exc.reason))
            continue
        if image.sha256 in first_seen:
            result.refused.append(Refused(cand.path, f"exact duplicate of {first_seen[image.sha256]}"))
            continue
        first_seen[image.sha256] = cand.path
        result.images.append(image)
    result.warnings += _count_warnings(len(result.images), min_images)
    return result


def _check_one(cand: Candidate, token: str, with_reasons: bool, max_pixels: int) -> TrainImage:
    im = load_rgb(cand.path, max_pixels)
    try:
        return TrainImage(
            path=cand.path,
            image_id=cand.image_id,
            sha256=pixel_sha256(im),
            caption=cand.caption if cand.caption is not None else caption_for(cand, token, with_reasons),
            width=im.width,
            height=im.height,
            label=cand.label,
        )
    finally:
        im.close()  # only the facts are kept: 100 decoded 8K images would not fit in memory


def _count_warnings(count: int, min_images: int) -> list[str]:
    if count >= min_images:
        return []
    if count == 0:
        return [f"no usable images: a LoRA needs at least {min_images}; 15-100 is typical"]
    noun = "image" if count == 1 else "images"
    return [f"only {count} {noun}: a LoRA needs at least {min_images}; 15-100 is typical"]
