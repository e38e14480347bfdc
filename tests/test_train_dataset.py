"""Training data: collecting rejects, pre-flight of bad and odd files, aspect buckets and SDXL time ids."""

import io
import random
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from negalora.errors import NegaloraError
from negalora.home import Home
from negalora.store import Store
from negalora.train.buckets import make_buckets, nearest_bucket, prepare
from negalora.train.dataset import (
    MAX_PIXELS,
    Candidate,
    PreflightError,
    caption_for,
    collect_rejects,
    load_rgb,
    preflight,
)

# -- making odd files -----------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_only_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` (1-bit grey) with a token IDAT: a bomb in 80 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def rgba_half_transparent() -> Image.Image:
    """Left half opaque blue, right half fully transparent red, one pixel half-transparent black."""
    a = np.zeros((8, 8, 4), dtype=np.uint8)
    a[:, :4] = (0, 0, 255, 255)
    a[:, 4:] = (255, 0, 0, 0)
    a[0, 0] = (0, 0, 0, 128)
    return Image.fromarray(a, "RGBA")


def palette_with_transparency() -> Image.Image:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (0, 0, 4, 8))  # left half green, right half index 0 (red, but transparent)
    return im


def rotated_jpeg() -> bytes:
    """40x20 black with a red block top-left, stored with EXIF orientation 6 (display rotated 90 deg clockwise)."""
    im = Image.new("RGB", (40, 20), "black")
    im.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(im, "JPEG", exif=exif, quality=95)


ODD_FILES = {
    "good1.png": lambda: encoded(noise(seed=1), "PNG"),
    "truncated.png": lambda: encoded(noise((256, 256), seed=2), "PNG")[:20000],
    "empty.png": lambda: b"",
    "notes.png": lambda: b"these are my notes, not a picture\n" * 20,
    "cmyk.jpg": lambda: encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95),
    "rgba.png": lambda: encoded(rgba_half_transparent(), "PNG"),
    "palette.png": lambda: encoded(palette_with_transparency(), "PNG", transparency=0),
    "gray16.png": lambda: encoded(Image.fromarray(np.array([[0, 65535, 257 * 100, 128]], dtype=np.uint16)), "PNG"),
    "rotated.jpg": rotated_jpeg,
    "bomb.png": lambda: header_only_png(20000, 20000),
    "document.png": lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
    "drawing.png": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "anim.png": lambda: encoded(Image.new("P", (4, 4)), "GIF"),
    "a_dup.png": lambda: encoded(noise(seed=7), "PNG"),
    "b_dup.bmp": lambda: encoded(noise(seed=7), "BMP"),
}


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("odd")
    for name, make in ODD_FILES.items():
        (folder / name).write_bytes(make())
    return folder


def reason(folder: Path, name: str, **kw) -> str:
    with pytest.raises(PreflightError) as info:
        load_rgb(folder / name, **kw)
    return info.value.reason


# -- load_rgb: refusals ---------------------------------------------------------------------


def test_refusals_name_the_reason(odd):
    assert reason(odd, "truncated.png") == "truncated file"
    assert reason(odd, "empty.png") == "zero-byte file"
    assert reason(odd, "notes.png") == "not an image"
    assert reason(odd, "document.png").startswith("PDF is not accepted")
    assert reason(odd, "drawing.png").startswith("PostScript/EPS is not accepted")
    assert reason(odd, "anim.png").startswith("GIF is not accepted")
    assert reason(odd, "missing.png") == "no such file"


def test_bomb_is_refused_from_the_header_without_decoding(odd, monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    start = time.perf_counter()
    assert reason(odd, "bomb.png") == "decompression bomb (400000000 pixels)"  # over PIL's own hard limit
    # Over our limit but under PIL's warning threshold (89 MP): our header check catches it.
    (odd / "big.png").write_bytes(header_only_png(9000, 9000))
    assert reason(odd, "big.png") == f"decompression bomb (81000000 pixels; the limit is {MAX_PIXELS})"
    assert reason(odd, "good1.png", max_pixels=1000).startswith("decompression bomb (3072 pixels")
    assert time.perf_counter() - start < 1.0


# -- load_rgb: conversions ------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb(odd):
    im = load_rgb(odd / "cmyk.jpg")
    assert im.mode == "RGB"
    r, g, b = im.getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15  # CMYK (0, 100%, 100%, 0) is red


def test_rgba_is_flattened_onto_white(odd):
    im = load_rgb(odd / "rgba.png")
    assert im.mode == "RGB"
    assert im.getpixel((1, 4)) == (0, 0, 255)
    assert im.getpixel((6, 4)) == (255, 255, 255)  # transparent red is white, not red or black
    assert all(abs(c - 127) <= 1 for c in im.getpixel((0, 0)))  # half-transparent black on white


def test_palette_transparency_is_flattened_onto_white(odd):
    with Image.open(odd / "palette.png") as raw:
        assert raw.mode == "P" and raw.info["transparency"] == 0
    im = load_rgb(odd / "palette.png")
    assert im.getpixel((1, 1)) == (0, 255, 0)
    assert im.getpixel((6, 6)) == (255, 255, 255)


def test_16_bit_grey_is_scaled_not_clipped(odd):
    with Image.open(odd / "gray16.png") as raw:
        assert raw.mode == "I;16"
    im = load_rgb(odd / "gray16.png")
    assert [im.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (255, 255, 255), (100, 100, 100), (0, 0, 0)]


def test_exif_orientation_is_applied(odd):
    with Image.open(odd / "rotated.jpg") as raw:
        assert raw.size == (40, 20)
    im = load_rgb(odd / "rotated.jpg")
    assert im.size == (20, 40)
    r, g, b = im.getpixel((15, 5))  # the stored top-left block is now top-right
    assert r > 200 and g < 60 and b < 60
    assert max(im.getpixel((5, 5))) < 60
    assert max(im.getpixel((15, 35))) < 60


def test_bmp_and_png_of_the_same_pixels_decode_alike(odd):
    assert load_rgb(odd / "a_dup.png").tobytes() == load_rgb(odd / "b_dup.bmp").tobytes()


# -- preflight ------------------------------------------------------------------------------


def test_preflight_sorts_the_folder(odd):
    candidates = [Candidate(odd / name, None, ("hands",)) for name in sorted(ODD_FILES)]
    result = preflight(candidates, with_reasons=True)
    kept = {i.path.name for i in result.images}
    assert kept == {"good1.png", "cmyk.jpg", "rgba.png", "palette.png", "gray16.png", "rotated.jpg", "a_dup.png"}
    refused = {r.path.name: r.reason for r in result.refused}
    assert refused["b_dup.bmp"] == f"exact duplicate of {odd / 'a_dup.png'}"
    assert refused["bomb.png"].startswith("decompression bomb")
    assert refused["truncated.png"] == "truncated file"
    assert set(refused) | kept == set(ODD_FILES)  # every file is accounted for
    rotated = next(i for i in result.images if i.path.name == "rotated.jpg")
    assert (rotated.width, rotated.height) == (20, 40)
    assert rotated.caption == "wrong, hands"
    assert len({i.sha256 for i in result.images}) == len(result.images)
    assert result.warnings == []


def test_preflight_warns_when_too_few(odd):
    result = preflight([Candidate(odd / "good1.png", None), Candidate(odd / "rgba.png", None)])
    assert result.warnings == ["only 2 images: a LoRA needs at least 5; 15-100 is typical"]
    assert preflight([]).warnings[0].startswith("no usable images")


def test_caption():
    cand = Candidate(Path("x.png"), 1, ("bad hands", "blur"))
    assert caption_for(cand) == "wrong"
    assert caption_for(cand, with_reasons=True) == "wrong, bad hands, blur"
    assert caption_for(cand, token="ugh", with_reasons=True) == "ugh, bad hands, blur"
    assert caption_for(Candidate(Path("x.png"), None), with_reasons=True) == "wrong"


# -- collect_rejects against a real store ---------------------------------------------------


@pytest.fixture
def store(tmp_path):
    s = Store(Home(tmp_path / "home"))
    yield s
    s.close()


def add(store, seed: int) -> int:
    return store.add_imported(encoded(noise(seed=seed), "PNG"), ".png", 64, 48, f"n{seed}.png").id


def test_collect_rejects_filters_and_adds_extra(store, tmp_path):
    hands = [add(store, 1), add(store, 2)]
    blur, picked, unrated = add(store, 3), add(store, 4), add(store, 5)
    store.rate(hands, "reject", ["hands"])
    store.rate([blur], "reject", ["blur", "text"])
    store.rate([picked], "pick")
    extra = tmp_path / "more"
    (extra / "sub").mkdir(parents=True)
    noise(seed=9).save(extra / "sub" / "x.JPG")
    (extra / "readme.txt").write_text("not an image")
    (extra / "._x.png").write_bytes(b"macOS resource fork")

    everything = collect_rejects(store)
    assert [c.image_id for c in everything] == [*hands, blur]
    assert all(c.path.is_absolute() and c.path.is_file() for c in everything)
    assert everything[2].reasons == ("blur", "text")

    only_hands = collect_rejects(store, reasons=["Hands"], extra=[extra, tmp_path / "gone.png"])
    assert [c.image_id for c in only_hands] == [*hands, None, None]
    assert only_hands[2].path == extra / "sub" / "x.JPG"
    assert only_hands[3].path == tmp_path / "gone.png"  # kept so pre-flight reports it
    assert preflight(only_hands).refused[0].reason == "no such file"
    assert unrated not in [c.image_id for c in everything]


def test_collect_rejects_time_window(store):
    ids = [add(store, 1), add(store, 2)]
    store.rate(ids, "reject")
    assert len(collect_rejects(store, since="2000-01-01", until="2999-12-31")) == 2
    assert collect_rejects(store, since="2999-01-01T00:00+00:00") == []
    assert collect_rejects(store, until="2000-01-01") == []
    with pytest.raises(NegaloraError, match="since 'yesterday'"):
        collect_rejects(store, since="yesterday")


# -- buckets --------------------------------------------------------------------------------

SDXL_BUCKETS = [(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344)]


def test_sdxl_buckets():
    buckets = make_buckets(1024, 64)
    assert set(SDXL_BUCKETS) <= set(buckets)
    assert all(w * h <= 1024**2 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert all(max(w / h, h / w) <= 2.0 for w, h in buckets)
    assert all((h, w) in buckets for w, h in buckets)
    assert len(set(buckets)) == len(buckets)


def test_demo_buckets():
    assert set(make_buckets(64, 8)) == {(64, 64), (72, 56), (56, 72), (80, 48), (48, 80)}
    with pytest.raises(ValueError):
        make_buckets(100, 64)


def test_nearest_bucket():
    buckets = make_buckets(1024, 64)
    assert nearest_bucket(1500, 1000, buckets) == (1216, 832)
    assert nearest_bucket(1000, 1500, buckets) == (832, 1216)
    assert nearest_bucket(777, 777, buckets) == (1024, 1024)
    assert nearest_bucket(5000, 100, buckets) == max(buckets, key=lambda b: b[0] / b[1])


def gradient(width: int, height: int) -> Image.Image:
    """Red rises left to right, green top to bottom, blue is 0: every pixel says where it came from."""
    a = np.zeros((height, width, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, width).round()[None, :]
    a[..., 1] = np.linspace(0, 255, height).round()[:, None]
    return Image.fromarray(a, "RGB")


def test_prepare_exact_fit():
    p = prepare(gradient(100, 50), (64, 32))
    assert p.pixels.shape == (3, 32, 64) and p.pixels.dtype == torch.float32
    assert p.pixels.min() >= -1.0 and p.pixels.max() <= 1.0
    assert p.pixels[2].eq(-1.0).all()  # blue 0 maps to -1
    assert p.time_ids().tolist() == [50.0, 100.0, 0.0, 0.0, 32.0, 64.0]
    assert p.time_ids().dtype == torch.float32


def test_prepare_crops_and_flips():
    square = gradient(100, 100)
    p = prepare(square, (64, 32))  # resized to 64x64, 16 rows cut off above
    assert (p.original_size, p.crop_top_left, p.target_size) == ((100, 100), (16, 0), (32, 64))
    flipped = prepare(square, (64, 32), flip=True)
    assert torch.equal(flipped.pixels, p.pixels.flip(-1))
    assert flipped.crop_top_left == (16, 0)

    white = prepare(Image.new("RGB", (10, 10), "white"), (64, 32))
    assert white.pixels.eq(1.0).all()


def test_random_crop_is_repeatable_and_flip_mirrors_the_left_edge():
    wide = gradient(300, 100)  # resized to 96x32 for a 32x32 bucket
    a = prepare(wide, (32, 32), center_crop=False, rng=random.Random(3))
    b = prepare(wide, (32, 32), center_crop=False, rng=random.Random(3), flip=True)
    assert a.crop_top_left[0] == 0 and 0 <= a.crop_top_left[1] <= 64
    assert torch.equal(b.pixels, a.pixels.flip(-1))
    assert b.crop_top_left == (0, 96 - a.crop_top_left[1] - 32)
    with pytest.raises(ValueError):
        prepare(wide, (32, 32), center_crop=False)
