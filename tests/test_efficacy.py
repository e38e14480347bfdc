"""A small run of the efficacy experiment (benchmarks/bench_efficacy.py runs the full one): session,
rejects by the detectors, a LoRA trained on them, held-out columns counted."""

from negalora.demo_world.efficacy import EfficacyConfig, run_efficacy
from negalora.generate import Generator
from negalora.lora_passes import DEFAULT
from negalora.store import Store

SMALL = EfficacyConfig(
    session_images=64,
    held_out_prompts=20,
    held_out_seeds=2,
    train={"rank": 4, "lr": 1e-4, "steps": 120, "batch": 4},
    prior_preservation=(False,),
)


def test_the_experiment_runs_through_the_product_and_the_default_way_beats_base(home, demo_model):
    store = Store(home)
    result = run_efficacy(Generator(demo_model), store, SMALL)
    assert result.session["images"] == 64
    assert 0 < result.session["rejected"] < 64  # the detectors reject some, not all
    assert store.counts()["reject"] == result.session["rejected"]
    run = store.run(result.runs["plain"])
    assert run["status"] == "done" and run["images"] == result.session["rejected"]
    keys = [c.key for c in result.columns]
    assert keys == ["base", "negative", "lora_both_plain", "lora_negative_plain"]
    assert all(c.n == 40 for c in result.columns)
    # the same seeds in every column: only the stated differences vary
    base, default = result.column("base"), result.column(f"lora_{DEFAULT}_plain")
    assert base.defective > 0
    assert default.rate < base.rate, (default.summary(), base.summary())
    assert result.adherence["colour"] >= 0.8
    store.close()
