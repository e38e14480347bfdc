"""The demo world's published efficacy numbers (docs/efficacy.md), for model cards of runs that have
measured nothing yet. A test holds them to the report's table, so the two cannot drift; the report
is remade with ``python benchmarks/bench_efficacy.py --report docs/efficacy.md``."""

REPORT = "docs/efficacy.md"
COMMAND = "python benchmarks/bench_efficacy.py --report docs/efficacy.md"
SETUP = (
    "the demo model, a 2,000-image session with 184 rejects, 1,000 held-out images per column "
    "(each its own seed), CFG 3, LoRA strength 1"
)
# way -> (report row, defective, n, shape as asked %)
ROWS = {
    "base": ("base", 104, 1000, 96),
    "token_only": ("negative `wrong` only", 141, 1000, 64),
    "both_passes": ("LoRA both passes + negative", 128, 1000, 46),
    "negative_pass": ("LoRA negative pass only + negative", 49, 1000, 92),
}

# The held-out preference experiment (docs/efficacy_preference.md), for the cards of liked LoRAs (KTO,
# DPO, a picks LoRA) that have measured nothing: objective -> way -> (report row, defective, n, shape %).
# A picks LoRA's rows are the `right` ones; the `wrong` LoRA alone on the negative pass is shown beside.
PREFERENCE_REPORT = "docs/efficacy_preference.md"
PREFERENCE_COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_preference.py --report docs/efficacy_preference.md"
PREFERENCE_SETUP = (
    "the demo model, a 2,000-image session with 184 rejects and 184 picks (one of each reject's own prompt), "
    "1,000 held-out images per column (each its own seed), CFG 3, every LoRA at strength 1, the prompt unchanged"
)
_PREFERENCE_SHARED = {
    "base": ("base", 104, 1000, 96),
    "wrong_negative_pass": ("`wrong` negative pass + negative (today's best)", 49, 1000, 91),
}
PREFERENCE_ROWS = {
    "kto": {
        **_PREFERENCE_SHARED,
        "positive_pass": ("KTO positive pass", 0, 1000, 97),
        "both_passes": ("KTO both passes", 0, 1000, 97),
        "positive_with_wrong": ("KTO positive + `wrong` negative", 0, 1000, 94),
    },
    "dpo": {
        **_PREFERENCE_SHARED,
        "positive_pass": ("DPO positive pass", 1, 1000, 98),
        "both_passes": ("DPO both passes", 4, 1000, 99),
        "positive_with_wrong": ("DPO positive + `wrong` negative", 1, 1000, 91),
    },
    "picks": {
        **_PREFERENCE_SHARED,
        "positive_pass": ("`right` positive pass", 96, 1000, 70),
        "positive_with_wrong": ("`right` positive + `wrong` negative", 62, 1000, 65),
    },
}
