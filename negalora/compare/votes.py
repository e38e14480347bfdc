"""Blind votes: pairs shown in random left/right order, and the win rate with a 95% interval.

A tie counts as half a win, as in chess. The interval is Wilson's score interval, which stays inside
[0, 1] and is honest for the small counts an artist produces (10-50 votes).
"""

import math
import random
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class WinRate:
    a_label: str
    b_label: str
    run_id: str | None
    step: int | None
    wins: int  # a won
    losses: int
    ties: int
    lora_hash: str = ""  # a LoRA file's votes (no run) are kept apart by its hash

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def rate(self) -> float:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.wins + 0.5 * self.ties, self.n)

    def describe(self) -> str:
        lo, hi = self.interval
        if self.run_id:
            where = f"run {self.run_id}" + (f" step {self.step}" if self.step is not None else "")
        else:
            where = f"LoRA {self.lora_hash[:10]}" if self.lora_hash else ""
        return (
            f"{self.a_label} beats {self.b_label} {self.rate:.0%} (95% CI {lo:.0%}–{hi:.0%}; "
            f"{self.wins} wins, {self.losses} losses, {self.ties} ties){' · ' + where if where else ''}"
        )

    def to_dict(self) -> dict:
        lo, hi = self.interval
        return {
            "a_label": self.a_label,
            "b_label": self.b_label,
            "run_id": self.run_id,
            "step": self.step,
            "lora_hash": self.lora_hash,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "n": self.n,
            "rate": self.rate,
            "low": lo,
            "high": hi,
        }


def win_rates(votes: list[dict]) -> list[WinRate]:
    """One WinRate per (run and checkpoint, or LoRA file; contender; baseline), from stored ``votes`` rows."""
    groups: dict[tuple, list[int]] = {}
    for v in votes:
        lora = "" if v["run_id"] else v.get("lora_hash", "")
        key = (v["run_id"], v["step"], lora, v["a_label"], v["b_label"])
        tally = groups.setdefault(key, [0, 0, 0])
        tally[{"a": 0, "b": 1, "tie": 2}[v["outcome"]]] += 1
    return [
        WinRate(a_label=a, b_label=b, run_id=run, step=step, wins=w, losses=lo, ties=t, lora_hash=lora)
        for (run, step, lora, a, b), (w, lo, t) in groups.items()
    ]


@dataclass(frozen=True)
class VotePair:
    a_image_id: int
    a_path: str
    b_image_id: int
    b_path: str
    a_on_left: bool  # drawn at random; stored with the vote

    def left_right(self) -> tuple[str, str]:
        return (self.a_path, self.b_path) if self.a_on_left else (self.b_path, self.a_path)


def vote_pairs(comparison: dict, a_col: int, b_col: int, rng: random.Random | None = None) -> list[VotePair]:
    """One pair per row of a stored comparison (contender column ``a_col`` against ``b_col``), rows
    shuffled and sides drawn at random."""
    rng = rng or random.SystemRandom()
    by_row: dict[int, dict[int, dict]] = {}
    for cell in comparison["cells"]:
        by_row.setdefault(cell["row"], {})[cell["col"]] = cell
    pairs = [
        VotePair(
            row[a_col]["image_id"], row[a_col]["path"], row[b_col]["image_id"], row[b_col]["path"], rng.random() < 0.5
        )
        for _, row in sorted(by_row.items())
        if a_col in row and b_col in row and row[a_col]["image_id"] != row[b_col]["image_id"]
    ]
    rng.shuffle(pairs)
    return pairs
