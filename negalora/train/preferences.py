"""What the preference objectives learn from, read from the store: per-image labels for KTO (a pick
is desirable, a reject undesirable) and pairs for DPO (one prompt and size, one image preferred:
blind votes first, then a pick and a reject of one prompt). Each image keeps its own prompt as its
caption. Whatever is left out is listed with the reason."""

from dataclasses import dataclass
from pathlib import Path

from negalora.train.dataset import Candidate, TrainImage


@dataclass(frozen=True)
class LeftOut:
    what: str  # "#12", or "#12 vs #15"
    reason: str


def _prompted(store, row: dict) -> tuple[str, tuple[int, int]] | None:
    """The image's own prompt and size, or None when it has no recipe (imported)."""
    recipe = store.recipe(row["id"])
    if recipe is None or not recipe.prompt.strip():
        return None
    return recipe.prompt, (row["width"], row["height"])


def collect_labels(store) -> tuple[list[Candidate], list[LeftOut]]:
    """Every pick and reject with a prompt of its own, oldest first, labelled for KTO."""
    out, left = [], []
    for verdict in ("pick", "reject"):
        for row in sorted(store.images(verdict=verdict), key=lambda r: r["id"]):
            known = _prompted(store, row)
            if known is None:
                left.append(LeftOut(f"#{row['id']}", "no prompt of its own (imported): nothing to condition on"))
                continue
            out.append(Candidate(Path(row["path"]), row["id"], caption=known[0], label=verdict))
    return sorted(out, key=lambda c: c.image_id or 0), left


def collect_pairs(store) -> tuple[list[Candidate], list[tuple[int, int]], list[LeftOut]]:
    """DPO's pairs as (preferred id, rejected id), the images they use (each once), and what was left
    out. A blind vote is a pair when its two images share a prompt and size (a tie is no preference);
    then each reject is paired with a pick of the same prompt and size (the picks taken in turn)."""
    rows: dict[int, dict] = {}
    known: dict[int, tuple[str, tuple[int, int]] | None] = {}

    def facts(image_id: int):
        if image_id not in known:
            try:
                rows[image_id] = store.image(image_id)
            except Exception:  # noqa: BLE001 - a deleted image: no facts
                known[image_id] = None
                return None
            known[image_id] = _prompted(store, rows[image_id])
        return known[image_id]

    pairs: list[tuple[int, int]] = []
    left: list[LeftOut] = []
    for vote in store.votes():
        a, b = vote["a_image_id"], vote["b_image_id"]
        what = f"#{a} vs #{b}"
        if vote["outcome"] == "tie":
            left.append(LeftOut(what, "a tie: no preference"))
            continue
        fa, fb = facts(a), facts(b)
        if fa is None or fb is None:
            left.append(LeftOut(what, "an image without a prompt of its own, or no longer stored"))
        elif fa != fb:
            left.append(LeftOut(what, "not the same prompt and size"))
        else:
            pair = (a, b) if vote["outcome"] == "a" else (b, a)
            if pair not in pairs:
                pairs.append(pair)
    by_prompt: dict[tuple, list[int]] = {}
    for row in sorted(store.images(verdict="pick"), key=lambda r: r["id"]):
        if (f := facts(row["id"])) is not None:
            by_prompt.setdefault(f, []).append(row["id"])
    turn: dict[tuple, int] = {}
    for row in sorted(store.images(verdict="reject"), key=lambda r: r["id"]):
        f = facts(row["id"])
        if f is None:
            left.append(LeftOut(f"#{row['id']}", "a reject without a prompt of its own (imported)"))
            continue
        picks = by_prompt.get(f)
        if not picks:
            left.append(LeftOut(f"#{row['id']}", "a reject with no pick of the same prompt and size to pair with"))
            continue
        k = turn.get(f, 0)
        turn[f] = k + 1
        pair = (picks[k % len(picks)], row["id"])
        if pair not in pairs:
            pairs.append(pair)
    ids = sorted({i for pair in pairs for i in pair})
    candidates = []
    for i in ids:
        f = known[i]
        if f is not None:  # every image of a pair has its facts
            candidates.append(Candidate(Path(rows[i]["path"]), i, caption=f[0]))
    return candidates, pairs, left


def pair_indices(images: list[TrainImage], pairs: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[LeftOut]]:
    """The pairs as indices into the pre-flighted images; a pair that lost an image there is left out."""
    index = {img.image_id: k for k, img in enumerate(images)}
    kept, left = [], []
    for w, lo in pairs:
        if w in index and lo in index:
            kept.append((index[w], index[lo]))
        else:
            left.append(LeftOut(f"#{w} vs #{lo}", "an image was refused in pre-flight"))
    return kept, left
