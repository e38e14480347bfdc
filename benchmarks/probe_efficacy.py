"""Short efficacy probes (docs/efficacy_probes.md): one session, several LoRA recipes, each scored on
the negative pass against the same held-out rows. Quicker than bench_efficacy.py and made to compare
recipes, not to report.

    python benchmarks/probe_efficacy.py SESSION_CFG EVAL_CFG SESSION_IMAGES HELD_OUT_PROMPTS RECIPES_JSON

RECIPES_JSON is a list of {"name": ..., "train": {TrainConfig fields}, "scales": [1, 2]}, e.g.
'[{"name": "r16-ff", "train": {"rank": 16, "feed_forward": true, "lr": 3e-4}, "scales": [1]}]'.
Environment: SESSION_HOME=DIR reuses a session made before (its rejects as they stand); NO_BASE=1
skips the base column; BALANCE=X keeps X duplicate-only rejects per cropped reject (un-rating the rest).
"""

import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from negalora.demo_world.efficacy import (  # noqa: E402
    EfficacyConfig,
    adherence,
    held_out_rows,
    run_session,
    score_column,
    train_lora,
)
from negalora.device import choose_placement  # noqa: E402
from negalora.generate import Generator  # noqa: E402
from negalora.home import Home  # noqa: E402
from negalora.lora_passes import NEGATIVE  # noqa: E402
from negalora.models.loader import load_model  # noqa: E402
from negalora.store import Store  # noqa: E402


def show(column) -> None:
    lo, hi = column.interval
    print(
        f"  {column.label:40s} {column.rate * 100:5.1f}% [{lo * 100:.1f}-{hi * 100:.1f}] "
        f"shape {adherence(column)['shape'] * 100:.0f}% {column.by_kind()}",
        flush=True,
    )


def balance(store: Store, per_cropped: float) -> None:
    rejects = store.images("reject")
    duplicates = [r["id"] for r in rejects if r["reasons"] == ["duplicate"]]
    cropped = [r["id"] for r in rejects if "cropped" in r["reasons"]]
    keep = int(per_cropped * len(cropped))
    random.Random(0).shuffle(duplicates)
    if duplicates[keep:]:
        store.rate(duplicates[keep:], None)
    print(f"balanced: {min(keep, len(duplicates))} duplicate, {len(cropped)} cropped", flush=True)


def main() -> int:
    if len(sys.argv) != 6:
        print(__doc__)
        return 2
    session_cfg, eval_cfg = float(sys.argv[1]), float(sys.argv[2])
    n_session, n_prompts = int(sys.argv[3]), int(sys.argv[4])
    recipes = json.loads(sys.argv[5])
    reuse = os.environ.get("SESSION_HOME")
    home = Home(reuse or f"/tmp/negalora-probe-{int(time.time())}")
    store = Store(home)
    generator = Generator(load_model("demo", home, choose_placement("cpu")))
    cfg = EfficacyConfig(session_images=n_session, guidance=session_cfg, held_out_prompts=n_prompts)
    if not reuse:
        print("session", home.root, run_session(generator, store, cfg), flush=True)
    if os.environ.get("BALANCE"):
        balance(store, float(os.environ["BALANCE"]))
    evaluation = replace(cfg, guidance=eval_cfg)
    rows = held_out_rows(evaluation)
    if not os.environ.get("NO_BASE"):
        show(score_column(generator, "base", "base", rows, evaluation))
    for recipe in recipes:
        _, lora = train_lora(generator, store, replace(cfg, train={**cfg.train, **recipe["train"]}), False)
        for scale in recipe["scales"]:
            label = f"{recipe['name']} negative pass x{scale}"
            show(score_column(generator, "x", label, rows, replace(evaluation, scale=scale), "wrong", lora, NEGATIVE))
        generator.release_lora()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
