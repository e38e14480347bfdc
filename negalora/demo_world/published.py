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
