"""A small run of the re-render measurement (benchmarks/bench_rerender.py runs the full one): a
session, its rejects by the detectors, every reject re-rendered every way at every strength.

The full run trains the LoRA with the product's trainer (efficacy's ``train_lora``, tested in
tests/test_efficacy.py); here a LoRA written for the demo model stands in, so the run is quick."""

import numpy as np
import pytest
from helpers_lora import write_demo_lora

from negalora.demo_world.rerender import (
    LORA_BOTH,
    LORA_NEGATIVE,
    NONE,
    RerenderConfig,
    report_markdown,
    rerender_columns,
    run_rerender,
    sample_grid,
)
from negalora.store import Store

# 50 session images give a handful of rejects; 10 sampling steps re-run 3, 5 and 7 of them.
SMALL = RerenderConfig(session_images=50, sampling_steps=10)


@pytest.fixture(scope="module")
def run(demo_model, generator, tmp_path_factory):
    from negalora.home import Home

    home = Home(tmp_path_factory.mktemp("rerender-home"))
    lora = write_demo_lora(demo_model.pipe, tmp_path_factory.mktemp("lora") / "wrong.safetensors")
    store = Store(home)
    result = run_rerender(generator, store, SMALL, lora=str(lora))
    yield store, result
    store.close()


def test_every_reject_is_rerendered_once_per_way_and_strength(run):
    store, result = run
    rejects = result.rejects
    assert 0 < len(rejects) == result.session["rejected"] == store.counts()["reject"]
    assert all(r.kinds for r in rejects)  # each with the reasons it was rejected for
    assert len({r.rerender_seed for r in rejects}) == len(rejects)  # a seed of its own
    assert not {r.rerender_seed for r in rejects} & {r.seed for r in rejects}  # none of the session's
    assert [(c.way, c.strength) for c in result.columns] == [
        (way, s) for way in (NONE, LORA_NEGATIVE, LORA_BOTH) for s in SMALL.strengths
    ]
    ids = [r.image_id for r in rejects]
    for c in result.columns:
        assert [row.image_id for row in c.rows] == ids
        assert [row.source_kinds for row in c.rows] == [r.kinds for r in rejects]
        summary = c.summary()
        for name in ("repaired", "own_gone", "new_kind", "colour", "shape", "kept"):
            share = summary[name]
            assert share["n"] == len(rejects) and 0 <= share["low"] <= share["rate"] <= share["high"] <= 1
        # a clean re-render has neither its own defect nor a new one
        assert all(row.own_gone and not row.new_kind for row in c.rows if row.repaired)


def test_a_higher_strength_changes_the_reject_more(run):
    _, result = run
    for way in result.ways():
        diffs = [result.column(way, s).diff()["mean"] for s in SMALL.strengths]
        assert 0 < diffs[0] < diffs[1] < diffs[2], (way, diffs)
    # the ways differ: the LoRA changes what the same reject, seed and strength re-render to
    firsts = [np.asarray(c.images[0], dtype=np.int16) for c in result.columns if c.strength == SMALL.strengths[-1]]
    assert all(np.abs(a - b).max() > 0 for i, a in enumerate(firsts) for b in firsts[i + 1 :])


def test_the_same_rejects_rerender_to_the_same_counts(run, generator):
    _, result = run
    again = rerender_columns(generator, result.rejects, SMALL, result.lora)
    assert [c.summary() for c in again] == [c.summary() for c in result.columns]
    assert [[row.defects for row in c.rows] for c in again] == [[row.defects for row in c.rows] for c in result.columns]


def test_the_report_names_every_way_and_strength(run):
    _, result = run
    text = report_markdown(result, 60.0, "python benchmarks/bench_rerender.py --quick", "efficacy_rerender_grid.png")
    assert "python benchmarks/bench_rerender.py --quick" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(result.columns)
    for c in result.columns:
        assert any(line.startswith(f"| {c.label} | {c.strength:g} | ") for line in table), c.key
    for s in SMALL.strengths:
        assert f"Strength {s:g}:" in text
    assert "efficacy_rerender_grid.png" in text
    grid = sample_grid(result)
    assert grid is not None and grid.width > grid.height  # the reject, then 9 columns
