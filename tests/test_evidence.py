"""The rules by which a run's measurements become the card's advice (negalora.export.evidence), on a
small in-memory store: one image is one measurement, a vote counts for its pair of ways whichever
side each was shown on, and a difference whose 95% intervals overlap is not called a winner."""

import json

from negalora.export import evidence as ev
from negalora.export import model_card
from negalora.lora_passes import BOTH, NEGATIVE

COLUMNS = {
    ev.BASE: {"key": "base"},
    ev.TOKEN_ONLY: {"key": "negative", "with_token": True},
    ev.NEGATIVE_PASS: {"key": "lora", "lora_path": "x", "lora_passes": NEGATIVE, "step": 4, "with_token": True},
    ev.BOTH_PASSES: {"key": "lora_both", "lora_path": "x", "lora_passes": BOTH, "step": 4, "with_token": True},
}


class FakeStore:
    def __init__(self):
        self.comps: list[dict] = []
        self.vote_rows: list[dict] = []
        self.best_scale = None

    def add(self, columns: list[dict], cells: list[tuple[int, int, str | None]], kind: str = "three_col") -> None:
        """cells: (col, image_id, verdict)."""
        cid = len(self.comps) + 1
        self.comps.append(
            {
                "id": cid,
                "status": "done",
                "step": 4,
                "kind": kind,
                "columns": columns,
                "cells": [{"col": c, "image_id": i, "verdict": v} for c, i, v in cells],
            }
        )

    def comparisons(self, run_id):
        return self.comps

    def comparison(self, cid):
        return self.comps[cid - 1]

    def votes(self, run_id):
        return self.vote_rows

    def run(self, run_id):
        return {"best_scale": self.best_scale}


def _ways(store, counts: dict[str, tuple[int, int]], start=1) -> int:
    """One comparison with ``counts[way] = (rejects, picks)`` cells per way; returns the next image id."""
    columns = [COLUMNS[w] for w in counts]
    cells, image = [], start
    for col, (rejects, picks) in enumerate(counts.values()):
        for verdict in ["reject"] * rejects + ["pick"] * picks:
            cells.append((col, image, verdict))
            image += 1
    store.add(columns, cells)
    return image


def test_an_image_in_two_comparisons_is_counted_once():
    store = FakeStore()
    _ways(store, {ev.BASE: (2, 0), ev.NEGATIVE_PASS: (0, 2), ev.BOTH_PASSES: (1, 1)})
    # a both-pass sweep at strength 1 renders the both-pass column's recipe again: the same images
    sweep_cols = [{**COLUMNS[ev.BOTH_PASSES], "lora_scale": s} for s in (0.0, 1.0)]
    store.add(sweep_cols, [(0, 100, "reject"), (1, 5, "reject"), (1, 6, "pick")], kind="scale_sweep")
    e = ev.gather(store, "run", 4)
    assert (e.ways[ev.BOTH_PASSES].rated, e.ways[ev.BOTH_PASSES].rejects) == (2, 1)
    assert e.strength.sweep[1.0].rated == 2 and e.strength.sweep[0.0].rated == 1


def test_votes_count_for_their_pair_whichever_side_each_way_was_on():
    store = FakeStore()
    _ways(store, {ev.BASE: (0, 0), ev.NEGATIVE_PASS: (0, 0)})
    store.comps[0]["cells"] = [
        {"col": 0, "image_id": 1, "verdict": None},
        {"col": 1, "image_id": 2, "verdict": None},
        {"col": 0, "image_id": 3, "verdict": None},
        {"col": 1, "image_id": 4, "verdict": None},
    ]
    store.vote_rows = [
        {"a_image_id": 2, "b_image_id": 1, "outcome": "a"},  # negative pass shown as a, won
        {"a_image_id": 1, "b_image_id": 2, "outcome": "b"},  # base shown as a, the negative pass won
        {"a_image_id": 3, "b_image_id": 4, "outcome": "a"},  # base won
    ]
    e = ev.gather(store, "run", 4)
    assert len(e.votes) == 1
    v = e.votes[0]
    assert (v.a, v.b, v.wins, v.losses) == (ev.NEGATIVE_PASS, ev.BASE, 2, 1)
    assert e.decided_by == "votes" and e.best == ev.NEGATIVE_PASS
    assert e.undistinguished() == [ev.BASE]  # 2 of 3 votes: the interval holds 50%


def test_overlapping_intervals_are_not_called_worse_or_a_clear_best():
    small = FakeStore()
    _ways(small, {ev.BASE: (1, 2), ev.NEGATIVE_PASS: (0, 3), ev.BOTH_PASSES: (2, 1)})
    e = ev.gather(small, "run", 4)
    assert e.best == ev.NEGATIVE_PASS
    assert e.against_base(ev.BOTH_PASSES) == "higher" and not e.worse_than_base(ev.BOTH_PASSES)
    assert e.undistinguished() == [ev.BOTH_PASSES, ev.BASE]
    lead = model_card._lead(e, _usage())
    assert "not yet distinguishable" in lead and "LoRA on both passes, base" in lead
    table = model_card._ways_table(e)
    assert "**worse than base**" not in table and "not yet distinguishable" in table

    large = FakeStore()
    _ways(large, {ev.BASE: (16, 24), ev.NEGATIVE_PASS: (2, 38), ev.BOTH_PASSES: (30, 10)})
    e = ev.gather(large, "run", 4)
    assert e.worse_than_base(ev.BOTH_PASSES) and e.undistinguished() == []
    assert "not yet distinguishable" not in model_card._lead(e, _usage())
    assert "**worse than base**" in model_card._ways_table(e)


def test_a_best_strength_of_zero_still_gives_the_best_nonzero_tag():
    store = FakeStore()
    _ways(store, {ev.BASE: (0, 3), ev.NEGATIVE_PASS: (0, 3)})
    sweep_cols = [{**COLUMNS[ev.BOTH_PASSES], "lora_scale": s} for s in (0.0, 0.5, 1.0)]
    cells = [(0, 200 + i, "pick") for i in range(3)]
    cells += [(1, 210 + i, v) for i, v in enumerate(["pick", "pick", "reject"])]
    cells += [(2, 220 + i, "reject") for i in range(3)]
    store.add(sweep_cols, cells, kind="scale_sweep")
    e = ev.gather(store, "run", 4)
    assert (e.strength.scale, e.strength.nonzero) == (0.0, 0.5)
    a1111 = model_card._a1111(e, _usage(), "wrongx", "wrong")
    assert "leave it out" in a1111 and "<lora:wrongx:0.5>" in a1111 and "<lora:wrongx:1>" not in a1111


def test_when_base_measured_best_every_usage_section_says_to_leave_the_lora_out():
    store = FakeStore()
    _ways(store, {ev.BASE: (0, 20), ev.NEGATIVE_PASS: (10, 10), ev.BOTH_PASSES: (18, 2)})
    e = ev.gather(store, "run", 4)
    assert e.best == ev.BASE and e.undistinguished() == []
    assert model_card._comfyui(e, _usage(), "kohya", "wrong").startswith("**This run measured no way")
    assert model_card._a1111(e, _usage(), "w", "wrong").startswith("**This run measured no way")
    assert model_card._leave_out(e).startswith("**This run measured no way")
    store = FakeStore()
    _ways(store, {ev.BASE: (6, 0), ev.NEGATIVE_PASS: (0, 6)})
    assert model_card._leave_out(ev.gather(store, "run", 4)) == ""


def _usage() -> model_card.Usage:
    return model_card.Usage(
        prompt="a red circle",
        seed=1,
        steps=4,
        guidance=3.0,
        scheduler="Euler",
        width=32,
        height=32,
        base_kind="demo",
        base_path="demo",
        ckpt_name="demo.safetensors",
        ckpt_known=False,
        lora_dir="/tmp",
        lora_file="w.safetensors",
        comfy_lora_name="w.safetensors",
        workflow="w.comfyui.json",
        api_workflow="w.comfyui-api.json",
        workflow_form="negative_cond",
        run_id="run",
        step=4,
    )


def test_a_best_base_within_the_intervals_of_a_lora_way_is_said_softly():
    store = FakeStore()
    _ways(store, {ev.BASE: (0, 6), ev.NEGATIVE_PASS: (3, 3)})
    e = ev.gather(store, "run", 4)
    assert e.best == ev.BASE and e.undistinguished() == [ev.NEGATIVE_PASS]
    soft = model_card._leave_out(e)
    assert "not yet distinguishable" in soft and not soft.startswith("**")


def test_votes_name_the_ways_never_put_against_the_best():
    store = FakeStore()
    _ways(store, {ev.BASE: (0, 0), ev.NEGATIVE_PASS: (0, 0), ev.BOTH_PASSES: (0, 0)})
    cols = [COLUMNS[ev.BASE], COLUMNS[ev.NEGATIVE_PASS], COLUMNS[ev.BOTH_PASSES]]
    cells = [(c, 100 + 10 * c + k, None) for c in range(3) for k in range(10)]
    store.comps = []
    store.add(cols, cells)
    # the negative pass beats both passes 9-1, base beats both passes 9-1; negative vs base never voted
    votes = [{"a_image_id": 110 + k, "b_image_id": 120 + k, "outcome": "a" if k else "b"} for k in range(10)]
    votes += [{"a_image_id": 100 + k, "b_image_id": 120 + k, "outcome": "a" if k else "b"} for k in range(10)]
    store.vote_rows = votes
    e = ev.gather(store, "run", 4)
    assert e.decided_by == "votes" and e.best in (ev.NEGATIVE_PASS, ev.BASE)
    other = ev.BASE if e.best == ev.NEGATIVE_PASS else ev.NEGATIVE_PASS
    assert e.not_compared() == [other]
    assert "never put directly against" in model_card._lead(e, _usage())


# -- a LoRA of what is liked: its own ways -------------------------------------------------------

LIKED = {
    ev.BASE: {"key": "base"},
    ev.POSITIVE_PASS: {"key": "lora", "lora_path": "x", "lora_passes": "positive", "step": 4},
    ev.BOTH_PASSES: {"key": "lora_both", "lora_path": "x", "lora_passes": BOTH, "step": 4},
    ev.WITH_WRONG: {
        "key": "two_loras",
        "lora_path": "x",
        "lora_passes": "positive",
        "negative_lora_path": "w",
        "with_token": True,
        "step": 4,
    },  # fmt: skip
}


class LikedStore(FakeStore):
    def __init__(self, objective="kto", source="rejects"):
        super().__init__()
        self.config = json.dumps({"objective": objective, "source": source})

    def run(self, run_id):
        return {"best_scale": self.best_scale, "config": self.config}


def test_a_liked_lora_has_its_own_ways_and_a_wrong_lora_keeps_its_own():
    assert ev.way_of(LIKED[ev.POSITIVE_PASS], liked=True) == ev.POSITIVE_PASS
    assert ev.way_of(LIKED[ev.WITH_WRONG], liked=True) == ev.WITH_WRONG
    assert ev.way_of(LIKED[ev.BOTH_PASSES], liked=True) == ev.BOTH_PASSES
    assert ev.way_of(COLUMNS[ev.NEGATIVE_PASS], liked=True) is None  # a liked LoRA on the negative pass: no way
    assert ev.way_of(LIKED[ev.POSITIVE_PASS]) is None  # a `wrong` LoRA on the positive pass: no way
    assert ev.way_of(LIKED[ev.WITH_WRONG]) is None
    assert ev.way_of(COLUMNS[ev.NEGATIVE_PASS]) == ev.NEGATIVE_PASS


def test_a_liked_runs_ratings_decide_its_best_way_and_its_own_pass_sweep_is_kept_apart():
    store = LikedStore()
    columns = [LIKED[w] for w in (ev.BASE, ev.POSITIVE_PASS, ev.BOTH_PASSES, ev.WITH_WRONG)]
    cells = [(0, 1, "reject"), (0, 2, "reject"), (1, 3, "pick"), (1, 4, "pick"), (2, 5, "reject"), (2, 6, "pick"),
             (3, 7, "pick"), (3, 8, "reject")]  # fmt: skip
    store.add(columns, cells)
    positive_sweep = [{**LIKED[ev.POSITIVE_PASS], "lora_scale": s} for s in (0.5, 1.0)]
    store.add(positive_sweep, [(0, 20, "reject"), (1, 3, "pick")], kind="scale_sweep")
    e = ev.gather(store, "run", 4, liked=True)
    assert e.source == "run" and e.decided_by == "ratings" and e.best == ev.POSITIVE_PASS
    assert e.ways[ev.WITH_WRONG].rejects == 1 and e.ways[ev.POSITIVE_PASS].rated == 2
    assert ev.WRONG_NEGATIVE not in e.order  # a run never measures the `wrong` LoRA alone
    assert set(e.strength.negative_sweep) == {0.5, 1.0} and not e.strength.sweep
    assert "LoRA on the positive pass" in model_card._liked_lead(e, _usage())


def test_without_measurements_a_liked_lora_gets_its_kind_from_the_preference_experiment():
    kto = ev.gather(LikedStore("kto"), "run", 4, liked=True)
    assert kto.source == "demo_world" and kto.best == ev.POSITIVE_PASS
    assert kto.demo[ev.POSITIVE_PASS] == (0, 1000, 97) and kto.demo[ev.WRONG_NEGATIVE] == (49, 1000, 91)
    dpo = ev.gather(LikedStore("dpo"), "run", 4, liked=True)
    assert dpo.best == ev.POSITIVE_PASS and dpo.demo[ev.BOTH_PASSES] == (4, 1000, 99)
    picks = ev.gather(LikedStore("dreambooth", "picks"), "run", 4, liked=True)
    assert picks.best == ev.WRONG_NEGATIVE and ev.BOTH_PASSES not in picks.order  # not a column of the experiment
    assert picks.shape_below_base(ev.POSITIVE_PASS) == (70, 96)
    lead = model_card._liked_lead(picks, _usage())
    assert "No way of using this LoRA beat a `wrong` LoRA alone on the negative pass" in lead


def _usage():
    return model_card.Usage(
        prompt="p", seed=1, steps=2, guidance=3.0, scheduler="Euler", width=32, height=32, base_kind="demo",
        base_path="d", ckpt_name="c", ckpt_known=False, lora_dir="/x", lora_file="l.safetensors",
        comfy_lora_name="l.safetensors", workflow="l.comfyui.json", api_workflow="l.comfyui-api.json",
        workflow_form="positive_cond",
    )  # fmt: skip


def test_a_column_is_a_way_only_with_the_token_its_kind_was_measured_with():
    for way, column in COLUMNS.items():
        assert ev.way_of(column) == way
    for way, column in LIKED.items():
        assert ev.way_of(column, liked=True) == way
    # a `wrong` LoRA without its token, a liked one with a token: neither is a measured way
    assert ev.way_of({**COLUMNS[ev.NEGATIVE_PASS], "with_token": False}) is None
    assert ev.way_of({**LIKED[ev.POSITIVE_PASS], "with_token": True}, liked=True) is None
    assert ev.way_of({**LIKED[ev.WITH_WRONG], "with_token": False}, liked=True) is None
    assert ev.way_of(LIKED[ev.POSITIVE_PASS]) is None  # a positive-pass column of a `wrong` LoRA
