"""Learning from preferences: KTO on picks and rejects, DPO on preferred pairs, against the frozen base."""

import copy
import math

import pytest
import torch
from safetensors.torch import load_file

from negalora.api import GenerateRequest
from negalora.cancel import CancelToken
from negalora.device import choose_placement
from negalora.errors import NegaloraError
from negalora.generate import Generator, generate_to_store
from negalora.home import Home
from negalora.models.loader import load_model
from negalora.store import Store
from negalora.train.config import TrainConfig
from negalora.train.lora import add_lora, lora_off
from negalora.train.objective import Batch, dpo_loss, kto_loss, preference_loss
from negalora.train.preferences import collect_labels, collect_pairs
from negalora.train.trainer import Trainer


def _t(*values):
    return torch.tensor(values, dtype=torch.float32)


# -- the losses, against values computed by hand ------------------------------------------------


def test_kto_loss_by_hand():
    # rewards (ref - model): +0.1 (a pick), -0.1 (a reject); their mean 0 is the reference point
    loss, margin = kto_loss(_t(0.1, 0.3), _t(0.2, 0.2), torch.tensor([True, False]), beta=10)
    assert loss.item() == pytest.approx(1 - 1 / (1 + math.exp(-1.0)), abs=1e-6)  # 1 - sigmoid(10 x 0.1)
    assert margin.item() == pytest.approx(0.2, abs=1e-6)
    # rewards 0.2 and 0.1: the reference point is their mean 0.15, so both sit 0.05 on their right side
    loss, _ = kto_loss(_t(0.1, 0.1), _t(0.3, 0.2), torch.tensor([True, False]), beta=5, desirable_weight=2.0)
    one = 1 - 1 / (1 + math.exp(-0.25))
    assert loss.item() == pytest.approx((2 * one + 1 * one) / 2, abs=1e-6)
    # a reference point is never below 0: rewards -0.1 and -0.3 use 0
    loss, _ = kto_loss(_t(0.3, 0.5), _t(0.2, 0.2), torch.tensor([True, True]), beta=10)
    expected = ((1 - 1 / (1 + math.exp(1.0))) + (1 - 1 / (1 + math.exp(3.0)))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_kto_pushes_picks_to_denoise_better_and_rejects_worse():
    model_err = _t(0.2, 0.2).requires_grad_(True)
    loss, _ = kto_loss(model_err, _t(0.2, 0.2), torch.tensor([True, False]), beta=10)
    loss.backward()
    assert model_err.grad[0] > 0 > model_err.grad[1]  # lower a pick's error, raise a reject's


def test_dpo_loss_by_hand():
    loss, margin = dpo_loss(_t(0.1), _t(0.3), _t(0.2), _t(0.2), beta=10)
    assert margin.item() == pytest.approx(1.0, abs=1e-6)  # -0.5 x 10 x ((0.1 - 0.3) - 0)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))), abs=1e-6)
    w = _t(0.2).requires_grad_(True)
    lo = _t(0.2).requires_grad_(True)
    dpo_loss(w, lo, _t(0.2), _t(0.2), beta=10)[0].backward()
    assert w.grad[0] > 0 > lo.grad[0]


# -- the reference is the base model, exactly ---------------------------------------------------


@pytest.fixture(scope="module")
def unet_pair(tmp_path_factory):
    model = load_model("demo", Home(tmp_path_factory.mktemp("pref")), choose_placement("cpu"))
    base = copy.deepcopy(model.pipe.unet)
    tuned = copy.deepcopy(model.pipe.unet)
    add_lora(tuned, TrainConfig(rank=4))
    return model, base, tuned


def _batch(n: int, model) -> Batch:
    g = torch.Generator().manual_seed(0)
    unet = model.pipe.unet
    dim = unet.config.cross_attention_dim
    pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    size = unet.config.sample_size
    return Batch(
        latents=torch.randn(n, 4, size, size, generator=g),
        time_ids=torch.tensor([[32, 32, 0, 0, 32, 32]] * n, dtype=torch.float32),
        embeds=torch.randn(n, 77, dim, generator=g),
        pooled=torch.randn(n, pooled_dim, generator=g),
        desirable=torch.tensor([True, False] * (n // 2)),
    )


def test_the_reference_is_the_base_with_the_lora_off(unet_pair):
    model, base, tuned = unet_pair
    from negalora.train.objective import predict

    with torch.no_grad():
        for p in (p for n, p in tuned.named_parameters() if "lora_B" in n):
            p.normal_(0, 0.05)  # a LoRA that changes the output
        batch = _batch(2, model)
        t = torch.tensor([500, 500])
        with lora_off(tuned):
            off = predict(tuned, batch.latents, t, batch, torch.float32)
        on = predict(tuned, batch.latents, t, batch, torch.float32)
        plain = predict(base, batch.latents, t, batch, torch.float32)
    assert torch.equal(off, plain)
    assert (on - plain).abs().max() > 0
    with torch.no_grad():
        for p in (p for n, p in tuned.named_parameters() if "lora_B" in n):
            p.zero_()


def test_at_the_start_the_lora_is_the_base_so_kto_is_one_half_and_dpo_log_two(unet_pair):
    model, _, tuned = unet_pair
    scheduler = model.pipe.scheduler
    from diffusers import DDPMScheduler

    noise = DDPMScheduler.from_config(scheduler.config)
    for objective, expected in (("kto", 0.5), ("dpo", math.log(2))):
        loss, margin = preference_loss(
            tuned,
            lambda: lora_off(tuned),
            noise,
            _batch(4, model),
            torch.Generator().manual_seed(1),
            objective=objective,
            beta=1000,
        )
        assert loss.item() == pytest.approx(expected, abs=1e-6) and margin.item() == pytest.approx(0, abs=1e-6)


# -- what they learn from, read from the store -----------------------------------------------------


def _session(home: Home):
    """Three prompts, four images each (the demo model), and an imported file."""
    model = load_model("demo", home, choose_placement("cpu"))
    store = Store(home)
    prompts = ("a red circle on a blue background", "a yellow square on a black background", "a green star")
    done = generate_to_store(Generator(model), store, GenerateRequest(prompts=prompts, count=4, seed=1, steps=4))
    ids = [s.id for s, _ in done]
    imported = store.add_imported(_png(), ".png", 32, 32, "mine.png").id
    return model, store, ids, imported


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(buf, format="PNG")
    return buf.getvalue()


def test_labels_and_pairs_come_from_picks_rejects_and_votes(home):
    _, store, ids, imported = _session(home)
    red, yellow, green = ids[0:4], ids[4:8], ids[8:12]
    store.rate([red[0], yellow[0]], "pick")
    store.rate([red[1], red[2], yellow[1], green[0], imported], "reject")
    store.add_vote("LoRA", green[1], "base", green[2], a_on_left=True, choice="left")  # green[1] preferred
    store.add_vote("LoRA", green[3], "base", red[3], a_on_left=False, choice="left")  # two prompts: left out
    store.add_vote("LoRA", yellow[2], "base", yellow[3], a_on_left=True, choice="tie")
    candidates, left = collect_labels(store)
    assert [(c.image_id, c.label) for c in candidates] == [
        (red[0], "pick"), (red[1], "reject"), (red[2], "reject"), (yellow[0], "pick"), (yellow[1], "reject"),
        (green[0], "reject"),
    ]  # fmt: skip
    assert candidates[0].caption == "a red circle on a blue background"
    assert [x.what for x in left] == [f"#{imported}"] and "no prompt" in left[0].reason
    images, pairs, left = collect_pairs(store)
    assert pairs == [(green[1], green[2]), (red[0], red[1]), (red[0], red[2]), (yellow[0], yellow[1])]
    reasons = {x.what: x.reason for x in left}
    assert "tie" in reasons[f"#{yellow[2]} vs #{yellow[3]}"]
    assert "not the same prompt" in reasons[f"#{green[3]} vs #{red[3]}"]
    assert "no pick" in reasons[f"#{green[0]}"] and "without a prompt" in reasons[f"#{imported}"]
    assert sorted(c.image_id for c in images) == sorted({i for p in pairs for i in p})
    store.close()


def test_kto_and_dpo_refuse_what_they_cannot_learn_from(home):
    model, store, ids, _ = _session(home)
    store.rate(ids[:3], "reject")
    with pytest.raises(NegaloraError, match="0 picks, 3 rejects"):
        Trainer(home, store, model).start(TrainConfig(objective="kto", steps=2))
    with pytest.raises(NegaloraError, match="no pairs for DPO"):
        Trainer(home, store, model).start(TrainConfig(objective="dpo", steps=2))
    with pytest.raises(NegaloraError, match="text encoders stay frozen"):
        TrainConfig(objective="kto", train_text_encoder=True).check()
    with pytest.raises(NegaloraError, match="objective 'orpo'"):
        TrainConfig(objective="orpo").check()
    store.close()


# -- runs ---------------------------------------------------------------------------------------


def _config(objective: str, **kw) -> TrainConfig:
    base = dict(objective=objective, steps=8, lr=1e-3, batch=2, checkpoint_every=4, keep_last=0, rank=4, seed=2,
                validation_prompts=("a red circle on a blue background",), validation_steps=2)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _rated(home: Home):
    model, store, ids, _ = _session(home)
    red, yellow = ids[0:4], ids[4:8]
    store.rate([red[0], yellow[0], yellow[3]], "pick")
    store.rate([red[1], red[2], yellow[1], yellow[2]], "reject")
    return model, store


@pytest.mark.slow
def test_a_kto_run_resumed_ends_as_an_uninterrupted_one_and_reports_its_margin(tmp_path):
    finals, margins = [], []
    for name, stop in (("straight", None), ("resumed", 4)):
        home = Home(tmp_path / name)
        model, store = _rated(home)
        cancel, events = CancelToken(), []

        def on_event(e, stop=stop, cancel=cancel, events=events):
            events.append(e)
            if stop and e["type"] == "train_step" and e["step"] == stop:
                cancel.cancel()

        first = Trainer(home, store, model, on_event=on_event, cancel=cancel).start(_config("kto"))
        pre = next(e for e in events if e["type"] == "preflight")
        assert pre["labels"] == {"pick": 3, "reject": 4} and pre["objective"] == "kto"
        if stop:
            assert first.status == "cancelled" and first.steps_done == stop
            again = Trainer(home, store, model, on_event=events.append).resume(first.run_id)
            assert again.status == "done" and again.steps_done == 8
        steps = [e for e in events if e["type"] == "train_step"]
        assert all(math.isfinite(e["reward_margin"]) for e in steps)
        margins.append([e["reward_margin"] for e in steps])
        finals.append((load_file(store.checkpoints(first.run_id)[-1]["path"]), store.losses(first.run_id)))
        store.close()
    (a, losses_a), (b, losses_b) = finals
    assert losses_a == losses_b and [s for s, _ in losses_a] == list(range(1, 9))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert margins[0] == margins[1]


@pytest.mark.slow
def test_a_dpo_run_trains_on_its_pairs(home):
    model, store = _rated(home)
    events = []
    result = Trainer(home, store, model, on_event=events.append).start(_config("dpo", steps=6, checkpoint_every=6))
    assert result.status == "done" and result.steps_done == 6
    pre = next(e for e in events if e["type"] == "preflight")
    assert pre["pairs"] == 4  # red: pick 0 with rejects 1 and 2; yellow: picks 0 and 3 with rejects 1 and 2
    first = next(e for e in events if e["type"] == "train_step")
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)  # step 1: the LoRA is still the base
    tensors = load_file(result.checkpoints[-1])
    assert any("lora" in k for k in tensors)
    store.close()


def test_a_picks_lora_learns_right_from_the_picks_only(home):
    import json

    model, store = _rated(home)
    config = _config("dreambooth", source="picks", steps=2, checkpoint_every=2, validation_steps=0)
    result = Trainer(home, store, model).start(config)
    assert result.status == "done"
    dataset = json.loads((home.runs / result.run_id / "dataset.json").read_text())
    picks = sorted(r["id"] for r in store.images(verdict="pick"))
    assert sorted(i["image_id"] for i in dataset["images"]) == picks
    assert {i["caption"] for i in dataset["images"]} == {"right"}
    with pytest.raises(NegaloraError, match="source 'votes'"):
        TrainConfig(source="votes").check()
    store.close()


def test_a_liked_loras_validation_images_show_it_on_the_positive_pass_with_the_prompt_unchanged(home):
    import numpy as np
    from PIL import Image

    from negalora.compare.prompt_sets import DEMO_GUIDANCE
    from negalora.generate import GenerateRequest, Generator

    model, store = _rated(home)
    events = []
    config = _config("dreambooth", source="picks", steps=2, checkpoint_every=2, lr=3e-2, validation_steps=4)
    result = Trainer(home, store, model, on_event=events.append).start(config)
    assert result.status == "done"
    (event,) = [e for e in events if e["type"] == "validation"]
    assert event["passes"] == "positive" and event["guidance"] == DEMO_GUIDANCE
    shown = np.asarray(Image.open(event["paths"][0]).convert("RGB"), dtype=np.int16)
    generator = Generator(model)

    def rendered(passes: str):
        request = GenerateRequest(prompts=(config.validation_prompts[0],), seed=config.validation_seed, steps=4,
                                  guidance=DEMO_GUIDANCE, lora=result.checkpoints[-1], lora_passes=passes)  # fmt: skip
        ((_, image),) = generator.render_many(generator.plan(request), 1)
        return np.asarray(image.convert("RGB"), dtype=np.int16)

    positive, both = rendered("positive"), rendered("both")
    generator.release_lora()
    assert np.abs(shown - positive).max() <= 2  # the app's own positive-pass render of the checkpoint
    assert np.abs(shown - both).max() > 5
    with pytest.raises(NegaloraError, match="validation passes 'sideways'"):
        TrainConfig(validation_passes="sideways").check()
    store.close()
