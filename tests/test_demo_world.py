"""The demo world: deterministic samples, honest captions, and detectors and a classifier that read
the world's own labelled images back from pixels, also after a VAE-like degradation."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from negalora.demo_world import (
    COLOURS,
    DEFECTS,
    PALETTE,
    SHAPES,
    WORDS,
    WRONG,
    Caption,
    Classification,
    agrees,
    all_captions,
    caption_for,
    classify,
    contact_sheet,
    detect_defects,
    is_defective,
    make_dataset,
    make_sample,
    parse_caption,
)

CAPTION = re.compile(r"^a (\w+) (\w+) on a (\w+) background$")


def vae_like(image: Image.Image, seed: int) -> Image.Image:
    """What a small, lossy VAE might do: blur (down and up by 2), gaussian noise, JPEG at quality 75."""
    size = image.width
    half = image.resize((size // 2, size // 2), Image.Resampling.BILINEAR)
    blurred = half.resize((size, size), Image.Resampling.BILINEAR)
    noisy = np.asarray(blurred, dtype=np.float64) + np.random.default_rng(seed).normal(0, 6, (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8)).save(buffer, "JPEG", quality=75)
    return Image.open(buffer).convert("RGB")


@pytest.fixture(scope="module")
def labelled():
    """Half defective, so every kind gets ~50 samples; each with its degraded copy."""
    samples = list(make_dataset(300, seed=7, defect_rate=0.5))
    return samples, [vae_like(s.image, i) for i, s in enumerate(samples)]


def _rounded(values: dict) -> dict:
    return {k: round(float(v), 3) for k, v in values.items()}


def _pixels(samples, degraded, worse: bool):
    return degraded if worse else [s.image for s in samples]


def test_same_seed_same_bytes_and_other_seeds_differ():
    for defect in (None, *DEFECTS):
        a, b = make_sample(123, defect), make_sample(np.random.default_rng(123), defect)
        assert a.image.tobytes() == b.image.tobytes() and a == b
    first = [s.image.tobytes() for s in make_dataset(20, seed=1)]
    assert first == [s.image.tobytes() for s in make_dataset(20, seed=1)]
    assert first[:5] == [s.image.tobytes() for s in make_dataset(5, seed=1)]  # a longer set extends a shorter one
    assert first != [s.image.tobytes() for s in make_dataset(20, seed=2)]
    assert len(set(first)) == len(first)


def test_sizes_and_modes():
    for size in (32, 64):
        for defect in (None, *DEFECTS):
            sample = make_sample(5, defect, size=size)
            assert sample.image.mode == "RGB" and sample.image.size == (size, size)
    with pytest.raises(ValueError):
        make_sample(0, "blurry")


def test_captions_read_like_the_world_and_never_mention_defects():
    samples = list(make_dataset(1000, seed=3))
    caption_words = set(WORDS) - {WRONG}
    for s in samples:
        colour, shape, background = CAPTION.match(s.caption).groups()
        assert (colour, shape, background) == (s.colour, s.shape, s.background)
        assert colour in COLOURS and shape in SHAPES and background in COLOURS and colour != background
        assert set(s.caption.split()) <= caption_words  # so no defect word, nor "wrong"
        assert s.caption == caption_for(s.colour, s.shape, s.background)
        assert parse_caption(s.caption) == Caption(s.colour, s.shape, s.background)
    assert samples[0].caption.startswith("a ") and samples[0].caption.endswith(" background")
    assert len(set(all_captions())) == len(COLOURS) * len(SHAPES) * (len(COLOURS) - 1)
    assert {s.caption for s in samples} <= set(all_captions())
    assert WRONG in WORDS and len(set(WORDS)) == len(WORDS)


def test_defect_rate_and_kinds():
    samples = list(make_dataset(1000, seed=11))
    defects = [s.defect for s in samples if s.defect]
    rate = len(defects) / len(samples)
    print(f"defect rate {rate:.3f} over 1000 samples (asked 0.3)")
    assert 0.26 <= rate <= 0.34
    for kind in DEFECTS:
        assert 0.25 <= defects.count(kind) / len(defects) <= 0.42, kind
    assert not any(s.defect for s in make_dataset(50, seed=11, defect_rate=0.0))
    assert all(s.defect for s in make_dataset(50, seed=11, defect_rate=1.0))


def test_geometry_rules():
    for i, s in enumerate(make_dataset(200, seed=13, defect_rate=0.6)):
        rgb = np.asarray(s.image)
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        touches = np.any(np.all(border == PALETTE[s.colour], axis=1))
        assert touches == (s.defect == "cropped"), i  # clean shapes keep a margin; cropped ones reach out
        assert len(s.centres) == (2 if s.defect == "duplicate" else 1)
        assert (s.scratch is not None) == (s.defect == "scratch")
        if s.defect == "scratch":
            assert "black" not in (s.colour, s.background)  # so the scratch is the darkest thing
        if s.defect == "duplicate":
            (x1, y1), (x2, y2) = s.centres
            assert max(abs(x1 - x2), abs(y1 - y2)) >= s.side + 0.12 * 32 - 1e-9


@pytest.mark.parametrize("worse", [False, True], ids=["clean", "vae-like"])
def test_detectors_find_the_labelled_defects(labelled, worse):
    samples, degraded = labelled
    found = [detect_defects(image) for image in _pixels(samples, degraded, worse)]
    overall = np.mean([bool(f) == (s.defect is not None) for f, s in zip(found, samples, strict=True)])
    accuracy = {k: np.mean([(k in f) == (s.defect == k) for f, s in zip(found, samples, strict=True)]) for k in DEFECTS}
    recall = {k: np.mean([k in f for f, s in zip(found, samples, strict=True) if s.defect == k]) for k in DEFECTS}
    report = f"defective {overall:.3f}, per kind {_rounded(accuracy)}, recall {_rounded(recall)}"
    print(f"detectors ({'vae-like' if worse else 'clean'}, {len(samples)} samples): {report}")
    assert overall >= 0.95, report
    assert all(v >= 0.95 for v in accuracy.values()), report
    assert all(v >= 0.9 for v in recall.values()), report
    assert [is_defective(image) for image in _pixels(samples, degraded, worse)[:20]] == [bool(f) for f in found[:20]]


@pytest.mark.parametrize("worse", [False, True], ids=["clean", "vae-like"])
def test_classifier_reads_colour_shape_and_background(labelled, worse):
    samples, degraded = labelled
    pairs = [(s, image) for s, image in zip(samples, _pixels(samples, degraded, worse), strict=True) if not s.defect]
    results = [classify(image) for _, image in pairs]
    hits = np.array([agrees(c, s.caption) for c, (s, _) in zip(results, pairs, strict=True)])
    background = np.mean([c.background == s.background for c, (s, _) in zip(results, pairs, strict=True)])
    report = f"colour {hits[:, 0].mean():.3f}, shape {hits[:, 1].mean():.3f}, background {background:.3f}"
    print(f"classifier ({'vae-like' if worse else 'clean'}, {len(pairs)} clean samples): {report}")
    assert hits[:, 0].mean() >= 0.95 and background >= 0.95, report
    assert hits[:, 1].mean() >= 0.90, report


def test_detectors_and_classifier_at_64_pixels():
    samples = list(make_dataset(90, seed=17, defect_rate=0.6, size=64))
    degraded = [vae_like(s.image, i) for i, s in enumerate(samples)]
    right = np.mean([detect_defects(d) == ({s.defect} - {None}) for s, d in zip(samples, degraded, strict=True)])
    clean = [(s, d) for s, d in zip(samples, degraded, strict=True) if not s.defect]
    agree = np.mean([all(agrees(classify(d), s.caption)) for s, d in clean])
    print(f"64 px, vae-like: defects exactly right {right:.3f}, colour and shape right {agree:.3f}")
    assert right >= 0.95 and agree >= 0.9


def test_plain_images_and_arrays():
    blank = Image.new("RGB", (32, 32), PALETTE["green"])
    assert detect_defects(blank) == {"missing"} and is_defective(np.asarray(blank))  # no shape drawn
    speck = blank.copy()
    speck.putpixel((16, 16), PALETTE["red"])  # a speck is no shape either
    assert detect_defects(speck) == {"missing"}
    assert classify(blank) == Classification(None, None, "green")
    assert agrees(classify(blank), "a red circle on a green background") == (False, False)
    sample = make_sample(21)
    assert classify(np.asarray(sample.image)) == classify(sample.image)


def test_parse_caption():
    assert parse_caption("wrong, a Yellow triangle on a black background") == Caption("yellow", "triangle", "black")
    with pytest.raises(ValueError):
        parse_caption("a purple circle on a red background")
    assert agrees(Classification("red", "square", "blue"), Caption("red", "circle", "blue")) == (True, False)


def test_contact_sheet():
    samples = list(make_dataset(7, seed=4, defect_rate=0.5))
    sheet = contact_sheet(samples, columns=3, scale=8)
    assert sheet.mode == "RGB" and sheet.width == 3 * (256 + 6) + 6 and sheet.height > 3 * 256
    # The first tile is the first image, scaled up without smoothing.
    assert sheet.getpixel((6, 6)) == samples[0].image.getpixel((0, 0))
