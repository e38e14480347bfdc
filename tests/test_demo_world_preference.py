"""A small run of the preference experiment (benchmarks/bench_preference.py runs the full one): the
detectors reject and pick a session, the LoRAs are trained with the product's trainer on it, and the
held-out rows are rendered in several ways. No outcome numbers are asserted: the guards are what
the experiment must hold at any size (what was picked and paired, the same rows in every column)
and the direction a short KTO run cannot get wrong without a bug (it changes the renders and draws
no more defects than base's interval allows). The experiment's tests are marked slow (its session,
two runs and four columns take about 40 s); the pure ones are not."""

import numpy as np
import pytest
from PIL import Image

from negalora.demo_world.classify import agrees, classify
from negalora.demo_world.detect import detect_defects
from negalora.demo_world.efficacy import DEMO_RECIPE, held_out_rows
from negalora.demo_world.preference import (
    KTO,
    PROBE_END,
    PROBE_START,
    WAYS_BY_KEY,
    PreferenceConfig,
    ProbeSetting,
    SessionImage,
    WayColumn,
    choose_picks,
    meets_target,
    probe_markdown,
    probe_section_of,
    replace_probe_section,
    report_markdown,
    run_preference,
    run_probe,
    sample_grid,
)
from negalora.store import Store
from negalora.train.preferences import collect_pairs

# 180 session images show each of the world's 90 captions twice, so a reject can have a pick of its
# own prompt; 10 sampling steps and short runs keep it quick.
SMALL = PreferenceConfig(
    session_images=180,
    held_out_prompts=12,
    held_out_seeds=2,
    sampling_steps=10,
    wrong={**DEMO_RECIPE, "steps": 20},
    kto={**DEMO_RECIPE, "beta": 1000.0, "steps": 30},
    ways=("base", "wrong_neg", "kto_pos", "kto_pos_wrong_neg"),
    probe_prompts=4,
    probe_seeds=2,
)


@pytest.fixture(scope="module")
def run(generator, tmp_path_factory):
    from negalora.home import Home

    store = Store(Home(tmp_path_factory.mktemp("preference-home")))
    result = run_preference(generator, store, SMALL)
    yield store, result
    store.close()


def _rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


@pytest.mark.slow  # the module\'s small experiment: about 40 s on two cores
def test_the_detectors_pick_clean_as_prompted_images_and_reject_defective_ones(run):
    store, result = run
    picks = store.images(verdict="pick")
    rejects = store.images(verdict="reject")
    assert picks and rejects
    for row in picks:
        image = _rgb(row["path"])
        assert not detect_defects(image)
        assert agrees(classify(image), row["prompt"]) == (True, True)
    for row in rejects:
        kinds = detect_defects(_rgb(row["path"]))
        assert kinds and sorted(kinds) == row["reasons"]
    summary = result.session.summary()
    assert summary["picked"] == len(picks) <= summary["rejected"] == len(rejects)  # one pick per reject at most
    assert summary["images"] == SMALL.session_images


@pytest.mark.slow  # the module\'s small experiment: about 40 s on two cores
def test_every_pair_is_a_pick_and_a_reject_of_one_prompt_and_size(run):
    store, result = run
    _, pairs, _ = collect_pairs(store)
    assert pairs and pairs == result.session.pairs
    for w, lo in pairs:
        a, b = store.image(w), store.image(lo)
        assert (a["verdict"], b["verdict"]) == ("pick", "reject")
        assert store.recipe(w).prompt == store.recipe(lo).prompt
        assert (a["width"], a["height"]) == (b["width"], b["height"])


@pytest.mark.slow  # the module\'s small experiment: about 40 s on two cores
def test_every_column_renders_the_same_held_out_rows(run):
    _, result = run
    rows = held_out_rows(SMALL.efficacy_config())
    assert result.rows == rows
    assert [c.key for c in result.columns] == list(SMALL.ways)
    for c in result.columns:
        assert list(zip(c.prompts, c.seeds, strict=True)) == rows
        assert c.n == len(rows) == len(c.agreement)
    assert set(result.runs) == {"wrong", KTO}  # only the LoRAs the ways use are trained


@pytest.mark.slow  # the module\'s small experiment: about 40 s on two cores
def test_a_short_kto_run_on_the_positive_pass_changes_the_renders_without_more_defects(run):
    _, result = run
    base, kto = result.column("base"), result.column("kto_pos")
    diffs = [
        np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()
        for a, b in zip(base.images, kto.images, strict=True)
    ]
    assert max(diffs) > 0
    # Not a claim that it helps (30 steps cannot show that): it must not draw more defects than base's
    # own 95% interval allows.
    assert kto.rate <= base.interval[1]
    # the `wrong` LoRA beside it changes the renders again
    combo = result.column("kto_pos_wrong_neg")
    assert any(
        np.asarray(a).tobytes() != np.asarray(b).tobytes() for a, b in zip(kto.images, combo.images, strict=True)
    )


@pytest.mark.slow  # the module\'s small experiment: about 40 s on two cores
def test_the_report_names_every_column_the_target_and_keeps_the_probe(run):
    _, result = run
    old = f"# old\n\n{PROBE_START}\n## The probe\n\nkept text\n{PROBE_END}\n"
    text = report_markdown(
        result, 60.0, "python benchmarks/bench_preference.py --quick", "p_grid.png", probe_section_of(old)
    )
    assert "python benchmarks/bench_preference.py --quick" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0][2:] for line in table] == [WAYS_BY_KEY[k].label for k in SMALL.ways]
    assert "Target: **" in text and "Best combination" in text
    assert "kept text" in text and "p_grid.png" in text
    grid = sample_grid(result)  # a labelled cell per column and kept row
    assert (
        grid is not None and grid.width > len(result.columns) * 32 and grid.height > len(result.columns[0].images) * 32
    )


@pytest.mark.slow  # the module\'s small experiment: about 40 s on two cores
def test_the_probe_reads_every_checkpoint_on_rows_of_its_own(run, generator):
    store, result = run
    setting = ProbeSetting(KTO, beta=1000.0, lr=3e-4, steps=10, checkpoints=(5, 10))
    probe = run_probe(generator, store, SMALL, (setting,), session=result.session)
    assert [r.step for r in probe.rows] == [5, 10]
    assert len({r.trained.run_id for r in probe.rows}) == 1 and len(probe.rows[0].trained.margins) == 10
    probe_rows = held_out_rows(SMALL.probe_config())
    assert not set(probe_rows) & set(result.rows)  # never the held-out rows
    for r in [probe.base] + [r.column for r in probe.rows]:
        assert list(zip(r.prompts, r.seeds, strict=True)) == probe_rows
    assert probe.chosen(KTO) in probe.rows
    section = probe_markdown(probe, 30.0, "python benchmarks/bench_preference.py --probe")
    assert section.count("\n| KTO | 1000 | 0.0003 | ") == 2
    doc = replace_probe_section("# doc\n\nmain text\n", section)
    assert "main text" in doc and probe_section_of(doc) == section
    assert probe_section_of(replace_probe_section(doc, section)) == section


def _image(i: int, prompt: str, defects=(), agreement=(True, True)) -> SessionImage:
    return SessionImage(i, prompt, i, (32, 32), frozenset(defects), agreement, "")


def test_picks_are_one_per_reject_of_its_prompt_or_every_clean_image():
    images = [
        _image(1, "a", {"cropped"}),
        _image(2, "a"),
        _image(3, "a"),
        _image(4, "a", agreement=(True, False)),  # clean, but not the prompt's shape: never picked
        _image(5, "b", {"duplicate"}),
        _image(6, "b", {"cropped"}),
        _image(7, "b"),
        _image(8, "c"),
        _image(9, "d", {"scratch"}),  # no clean image of its prompt: no pick
    ]
    assert choose_picks(images, 1) == {2, 7}  # the oldest of each reject's prompt, none twice
    assert choose_picks(images, 2) == {2, 3, 7}
    assert choose_picks(images, 0) == {2, 3, 7, 8}


def _column(key: str, defective: int, n: int, colour: int, shape: int) -> WayColumn:
    c = WayColumn(key, key)
    c.defects = [{"cropped"} if i < defective else set() for i in range(n)]
    c.agreement = [(i < colour, i < shape) for i in range(n)]
    return c


def test_the_target_needs_every_part():
    base = _column("base", 100, 1000, 1000, 960)
    wrong = _column("wrong_neg", 50, 1000, 1000, 920)
    assert meets_target(_column("x", 20, 1000, 990, 940), base, wrong)["met"]
    assert not meets_target(_column("x", 40, 1000, 990, 940), base, wrong)["reduction"]  # only -60%
    assert not meets_target(_column("x", 20, 1000, 970, 940), base, wrong)["colour"]
    assert not meets_target(_column("x", 20, 1000, 990, 920), base, wrong)["shape"]  # 4 points below
    assert not meets_target(_column("x", 25, 1000, 990, 940), base, _column("w", 35, 1000, 1000, 960))["below_wrong"]
