"""What a run's own measurements say about the ways to use its LoRA, for the model card and the
ComfyUI workflow: the artist's verdicts on comparison cells, blind votes, the strength sweep on both
passes (A1111's way) and the strength the artist marked best. Where the run has measured nothing,
the demo world's published numbers stand in, labelled as such.

A way is how a comparison column used the LoRA: not at all (base), only the token in the negative
prompt, the LoRA on both guidance passes, or on the negative pass only. A LoRA of what is liked (KTO,
DPO, a picks LoRA: ``liked``) has its own ways: on the positive pass, on it beside a `wrong` LoRA on the
negative pass, on both passes. Torch-free.
"""

from dataclasses import asdict, dataclass, field

from negalora.compare.votes import wilson_interval
from negalora.demo_world import published
from negalora.lora_passes import BOTH, NEGATIVE, POSITIVE

BASE, TOKEN_ONLY, BOTH_PASSES, NEGATIVE_PASS = "base", "token_only", "both_passes", "negative_pass"
POSITIVE_PASS, WITH_WRONG = "positive_pass", "positive_with_wrong"  # a liked LoRA's own ways
WRONG_NEGATIVE = "wrong_negative_pass"  # beside a liked LoRA's ways: a `wrong` LoRA alone (the demo's reference)
WAYS = (NEGATIVE_PASS, BOTH_PASSES, TOKEN_ONLY, BASE)  # also the order that breaks ties
LIKED_WAYS = (POSITIVE_PASS, WITH_WRONG, BOTH_PASSES, WRONG_NEGATIVE, TOKEN_ONLY, BASE)
LORA_WAYS = {False: (NEGATIVE_PASS, BOTH_PASSES), True: (POSITIVE_PASS, WITH_WRONG, BOTH_PASSES)}
LABELS = {
    BASE: "no LoRA, no token (base)",
    TOKEN_ONLY: "`wrong` in the negative prompt, no LoRA",
    BOTH_PASSES: "LoRA on both passes + `wrong` (A1111, Forge, a plain LoraLoader, load_lora_weights)",
    NEGATIVE_PASS: "LoRA on the negative pass only + `wrong` (negalora's default; the ComfyUI hook workflow; "
    "negative_pass() in diffusers)",
}
SHORT = {
    BASE: "base",
    TOKEN_ONLY: "`wrong` only",
    BOTH_PASSES: "LoRA on both passes",
    NEGATIVE_PASS: "LoRA on the negative pass",
}
LIKED_LABELS = {
    POSITIVE_PASS: "LoRA on the positive pass only, prompt unchanged (`--lora-passes positive`; the ComfyUI hook "
    "workflow; positive_pass() in diffusers)",
    WITH_WRONG: "LoRA on the positive pass + a `wrong` LoRA on the negative pass, negative `wrong`",
    BOTH_PASSES: "LoRA on both passes (A1111, Forge, a plain LoraLoader, load_lora_weights)",
    WRONG_NEGATIVE: "not this LoRA: a `wrong` LoRA alone on the negative pass, negative `wrong` (for reference)",
    TOKEN_ONLY: LABELS[TOKEN_ONLY],
    BASE: LABELS[BASE],
}
LIKED_SHORT = {
    POSITIVE_PASS: "LoRA on the positive pass",
    WITH_WRONG: "LoRA on the positive pass with a `wrong` LoRA on the negative",
    BOTH_PASSES: "LoRA on both passes",
    WRONG_NEGATIVE: "a `wrong` LoRA alone on the negative pass",
    TOKEN_ONLY: SHORT[TOKEN_ONLY],
    BASE: SHORT[BASE],
}


def way_of(column: dict, liked: bool = False) -> str | None:
    """The way a comparison column used the LoRA; None where it is none of the ways described (a
    second LoRA beside a `wrong` one, a liked LoRA on the negative pass)."""
    passes, second = str(column.get("lora_passes", BOTH)), bool(column.get("negative_lora_path"))
    token = bool(column.get("with_token"))
    if not column.get("lora_path"):
        return None if second else TOKEN_ONLY if token else BASE
    if liked:
        if second:
            return WITH_WRONG if passes == POSITIVE and token else None
        # measured with the prompt unchanged: a column with the token is another way
        return None if token else {POSITIVE: POSITIVE_PASS, BOTH: BOTH_PASSES}.get(passes)
    if second or not token:  # a `wrong` LoRA is a way only beside its token
        return None
    return {NEGATIVE: NEGATIVE_PASS, BOTH: BOTH_PASSES}.get(passes)


@dataclass
class Tally:
    """The artist's verdicts on the cells rendered one way (or at one strength)."""

    cells: int = 0
    rated: int = 0
    rejects: int = 0
    picks: int = 0

    def add(self, verdict: str | None) -> None:
        self.cells += 1
        if verdict in ("reject", "pick"):
            self.rated += 1
            self.rejects += verdict == "reject"
            self.picks += verdict == "pick"

    @property
    def reject_rate(self) -> float | None:
        return self.rejects / self.rated if self.rated else None

    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.rejects, self.rated)

    def describe(self) -> str:
        if not self.rated:
            return f"{self.cells} cells, none rated yet"
        lo, hi = self.interval()
        return (
            f"{self.rejects} of {self.rated} rated cells rejected ({self.reject_rate:.0%}, 95% CI {lo:.0%}–{hi:.0%}), "
            f"{self.picks} picked"
        )


@dataclass
class VoteTally:
    a: str  # a way
    b: str
    wins: int = 0  # a won
    losses: int = 0
    ties: int = 0
    liked: bool = False  # the ways are a liked LoRA's

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def rate(self) -> float:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else 0.5

    def describe(self) -> str:
        lo, hi = wilson_interval(self.wins + 0.5 * self.ties, self.n)
        return (
            f"{_short(self.a, self.liked)} beat {_short(self.b, self.liked)} in {self.rate:.0%} of {self.n} "
            "blind votes "
            f"(95% CI {lo:.0%}–{hi:.0%}; {self.wins} wins, {self.losses} losses, {self.ties} ties)"
        )


@dataclass
class Strength:
    """The both-pass strength to use where a LoRA can only be loaded the usual way (A1111, Forge)."""

    scale: float | None  # None: nothing measured
    how: str  # marked | sweep | none
    nonzero: float | None = None  # the best-rated strength above 0, for a tag when the best is 0
    sweep: dict[float, Tally] = field(default_factory=dict)  # both-pass strengths of the run's sweeps
    negative_sweep: dict[float, Tally] = field(default_factory=dict)  # the LoRA's own pass (negative or positive)


@dataclass
class Evidence:
    source: str  # "run": this run's own measurements; "demo_world": the published demo numbers
    best: str  # the way that measured best
    ways: dict[str, Tally]
    votes: list[VoteTally]
    strength: Strength
    decided_by: str  # ratings | votes | demo_world
    demo: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # way -> (defective, n, shape %)
    liked: bool = False  # a LoRA of what is liked (KTO, DPO, picks): its own ways
    order: tuple[str, ...] = WAYS  # the ways shown, best-first on ties

    def label(self, way: str) -> str:
        return (LIKED_LABELS if self.liked else LABELS)[way]

    def short(self, way: str) -> str:
        return _short(way, self.liked)

    @property
    def lora_ways(self) -> tuple[str, ...]:
        """The ways that use this LoRA."""
        return LORA_WAYS[self.liked]

    def _rate_and_interval(self, way: str) -> tuple[float, float, float] | None:
        if self.source == "demo_world":
            if way not in self.demo:
                return None
            bad, n, _ = self.demo[way]
            return (bad / n, *wilson_interval(bad, n))
        tally = self.ways.get(way)
        rate = tally.reject_rate if tally else None
        if tally is None or rate is None:
            return None
        return (rate, *tally.interval())

    def against_base(self, way: str) -> str | None:
        """``"worse"`` when the measurement found ``way`` worse than base with 95% intervals apart,
        ``"higher"`` when only its measured rate is higher (the intervals overlap: not yet distinguishable)."""
        if self.decided_by == "votes":
            for v in self.votes:
                if (v.a, v.b) == (way, BASE):  # gather() orders each pair by ``order``: base is always second
                    if wilson_interval(v.wins + 0.5 * v.ties, v.n)[1] < 0.5:
                        return "worse"
                    return "higher" if v.rate < 0.5 else None
            return None
        mine, base = self._rate_and_interval(way), self._rate_and_interval(BASE)
        if mine is None or base is None or mine[0] <= base[0]:
            return None
        if mine[1] > base[2] or self.shape_below_base(way):
            return "worse"  # more defects beyond the intervals, or as many and the asked shape less often
        return "higher"

    def shape_below_base(self, way: str) -> tuple[float, float] | None:
        """(shape %, base's shape %) where the demo world found ``way`` drawing the asked shape less often
        than base, beyond the 95% intervals."""
        if self.source != "demo_world" or way == BASE or way not in self.demo or BASE not in self.demo:
            return None
        (_, n, shape), (_, base_n, base_shape) = self.demo[way], self.demo[BASE]
        if wilson_interval(shape * n / 100, n)[1] < wilson_interval(base_shape * base_n / 100, base_n)[0]:
            return shape, base_shape
        return None

    def worse_than_base(self, way: str) -> bool:
        """Whether the measurement behind this evidence found ``way`` worse than base, beyond its 95% intervals."""
        return self.against_base(way) == "worse"

    def not_compared(self) -> list[str]:
        """With votes: the voted ways that were never put directly against the best one."""
        if self.decided_by != "votes":
            return []
        voted = {w for v in self.votes for w in (v.a, v.b)}
        direct = {w for v in self.votes if self.best in (v.a, v.b) for w in (v.a, v.b)}
        return [w for w in self.order if w in voted and w not in direct]

    def undistinguished(self) -> list[str]:
        """The other measured ways whose 95% interval overlaps the best way's: the measurement cannot yet tell
        them from the best."""
        if self.decided_by == "votes":
            out = []
            for v in self.votes:
                if self.best in (v.a, v.b):
                    lo, hi = wilson_interval(v.wins + 0.5 * v.ties, v.n)
                    if lo <= 0.5 <= hi:
                        out.append(v.b if v.a == self.best else v.a)
            return [w for w in self.order if w in out]
        best = self._rate_and_interval(self.best)
        if best is None:
            return []
        out = []
        for way in self.order:
            other = self._rate_and_interval(way)
            if way != self.best and other is not None and other[1] <= best[2]:
                out.append(way)
        return out

    def numbers(self, way: str) -> str:
        """What was measured for one way, in words."""
        if self.source == "demo_world":
            if way not in self.demo:
                return "not measured"
            bad, n, shape = self.demo[way]
            lo, hi = wilson_interval(bad, n)
            return f"{bad / n:.1%} defects (95% CI {lo:.1%}–{hi:.1%}; {bad} of {n}), shape as asked {shape}%"
        parts = []
        tally = self.ways.get(way)
        if tally and tally.cells:
            parts.append(tally.describe())
        parts += [v.describe() for v in self.votes if way in (v.a, v.b)]
        return "; ".join(parts) or "not measured on this run"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["strength"]["sweep"] = {f"{k:g}": asdict(v) for k, v in self.strength.sweep.items()}
        out["strength"]["negative_sweep"] = {f"{k:g}": asdict(v) for k, v in self.strength.negative_sweep.items()}
        return out


def _cells_of_step(store, run_id: str, step: int):
    """(comparison, column, cell) for every cell of the run's comparisons that used this checkpoint
    (or no LoRA at all, beside it)."""
    for comparison in store.comparisons(run_id):
        if comparison["status"] != "done":
            continue
        full = store.comparison(comparison["id"])
        columns = full["columns"]
        lora_steps = {c.get("step") for c in columns if c.get("lora_path")}
        if comparison["step"] != step and step not in lora_steps:
            continue
        for cell in full["cells"]:
            column = columns[cell["col"]]
            if column.get("lora_path") and column.get("step", comparison["step"]) != step:
                continue  # another checkpoint of a checkpoint sweep
            yield comparison, column, cell


def _short(way: str, liked: bool) -> str:
    return (LIKED_SHORT if liked else SHORT)[way]


def gather(store, run_id: str, step: int, liked: bool = False) -> Evidence:
    """The run's measurements of one checkpoint, as ways; ``liked`` for a LoRA of what is liked."""
    # a run measures its own LoRA: a `wrong` LoRA alone is the demo world's reference only
    order = tuple(w for w in LIKED_WAYS if w != WRONG_NEGATIVE) if liked else WAYS
    own = POSITIVE_PASS if liked else NEGATIVE_PASS  # the pass the LoRA is made for
    ways: dict[str, Tally] = {w: Tally() for w in order}
    sweep: dict[float, Tally] = {}
    negative_sweep: dict[float, Tally] = {}
    way_of_image: dict[int, str] = {}
    # The store is content-addressed: the after-training comparison and a sweep at strength 1 can share
    # images, and one image is one measurement.
    seen: set[tuple] = set()
    for comparison, column, cell in _cells_of_step(store, run_id, step):
        way = way_of(column, liked)
        if way is None:
            continue
        scale = float(column.get("lora_scale", 1.0))
        if comparison["kind"] == "scale_sweep" and way in (own, BOTH_PASSES):
            key = (way == own, scale, cell["image_id"])
            if key not in seen:
                seen.add(key)
                (negative_sweep if way == own else sweep).setdefault(scale, Tally()).add(cell["verdict"])
            if scale != 1.0:
                continue  # a way's own numbers are at full strength
        if way in LORA_WAYS[liked] and scale != 1.0:
            continue
        if (way, cell["image_id"]) in seen:
            continue
        seen.add((way, cell["image_id"]))
        ways[way].add(cell["verdict"])
        way_of_image[cell["image_id"]] = way
    votes: dict[tuple[str, str], VoteTally] = {}
    for v in store.votes(run_id):
        a, b = way_of_image.get(v["a_image_id"]), way_of_image.get(v["b_image_id"])
        if a is None or b is None or a == b:
            continue
        outcome = v["outcome"]
        if order.index(a) > order.index(b):  # one tally per pair of ways, whichever side each was shown on
            a, b = b, a
            outcome = {"a": "b", "b": "a"}.get(outcome, outcome)
        tally = votes.setdefault((a, b), VoteTally(a, b, liked=liked))
        if outcome == "a":
            tally.wins += 1
        elif outcome == "b":
            tally.losses += 1
        else:
            tally.ties += 1
    strength = _strength(store.run(run_id).get("best_scale"), sweep, negative_sweep)
    rated = [w for w in order if ways[w].rated]
    if len(rated) >= 2 and any(w in rated for w in LORA_WAYS[liked]):
        # equal rates: the way measured on more cells (the lower upper bound) first
        best = min(rated, key=lambda w: (ways[w].reject_rate, ways[w].interval()[1], order.index(w)))
        return Evidence("run", best, ways, list(votes.values()), strength, "ratings", liked=liked, order=order)
    if votes:
        best = _best_by_votes(list(votes.values()), order)
        return Evidence("run", best, ways, list(votes.values()), strength, "votes", liked=liked, order=order)
    rows = published.PREFERENCE_ROWS[_liked_kind(store, run_id)] if liked else published.ROWS
    demo: dict[str, tuple[int, int, float]] = {way: (row[1], row[2], row[3]) for way, row in rows.items()}
    order = tuple(w for w in (LIKED_WAYS if liked else WAYS) if w in demo or not liked)  # the experiment's columns
    best = min(demo, key=lambda w: (demo[w][0] / demo[w][1], order.index(w)))
    return Evidence("demo_world", best, ways, [], strength, "demo_world", demo, liked=liked, order=order)


def _liked_kind(store, run_id: str) -> str:
    """Which of the preference experiment's LoRAs a liked run is: kto, dpo, or picks."""
    import json

    config = json.loads(store.run(run_id)["config"])
    objective = config.get("objective", "dreambooth")
    return objective if objective in published.PREFERENCE_ROWS else "picks"


def _best_by_votes(votes: list[VoteTally], order: tuple[str, ...] = WAYS) -> str:
    """The way with the best share of all its blind votes (a tie counts half)."""
    score: dict[str, list[float]] = {}
    for v in votes:
        for way, won in ((v.a, v.wins + 0.5 * v.ties), (v.b, v.losses + 0.5 * v.ties)):
            s = score.setdefault(way, [0.0, 0])
            s[0] += won
            s[1] += v.n
    return min(score, key=lambda w: (-score[w][0] / score[w][1], order.index(w)))


def _strength(marked, sweep: dict[float, Tally], negative_sweep: dict[float, Tally]) -> Strength:
    rated = {s: t for s, t in sweep.items() if t.rated}

    def best_of(scales):
        return min(scales, key=lambda s: (rated[s].reject_rate, rated[s].interval()[1], s), default=None)

    nonzero = best_of([s for s in rated if s > 0])
    if marked is not None:
        return Strength(float(marked), "marked", nonzero, sweep, negative_sweep)
    if rated:
        return Strength(best_of(rated), "sweep", nonzero, sweep, negative_sweep)
    return Strength(None, "none", None, sweep, negative_sweep)


BOTH_PASS_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)


def sweep_request(run_id: str, step: int, model_source: str) -> dict:
    """The strength sweep on both passes that the card's A1111 advice needs, as a CompareRequest dict
    (the model's default test set)."""
    from negalora.compare.prompt_sets import DEMO_STEPS, default_guidance, default_set_name

    return {
        "steps": DEMO_STEPS if model_source == "demo" else 25,
        "kind": "scale_sweep",
        "lora": run_id,
        "step": step,
        "scales": list(BOTH_PASS_SCALES),
        "lora_passes": BOTH,
        "prompt_set": default_set_name(model_source),
        "guidance": default_guidance(model_source),
    }
