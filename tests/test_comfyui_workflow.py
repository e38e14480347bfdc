"""The ComfyUI workflows written beside an export, held against ComfyUI's own node schemas (a fixture
taken from its source at the commit the workflows name): required inputs, link types, the UI and
API files describing one graph, and where the LoRA reaches the sampler."""

import json

import pytest
from helpers_comfyui import (
    FIXTURE,
    check_api,
    check_ui,
    lora_reaches_only_the_negative,
    lora_reaches_only_the_positive,
    same_graph,
    sampler,
    upstream,
)

from negalora.export import comfyui
from negalora.schedulers import SCHEDULERS


def spec(form, **kw):
    values = dict(
        ckpt_name="sd_xl_base_1.0.safetensors",
        lora_name="wrong-run-step800.safetensors",
        form=form,
        prompt="a red circle on a blue background",
        negative="wrong",
        seed=123456789012,
        steps=25,
        cfg=3.0,
        sampler="Euler",
        width=1024,
        height=1024,
    )
    values.update(kw)
    return comfyui.WorkflowSpec(**values)


def test_the_fixture_and_the_workflows_name_the_same_comfyui_commit():
    assert FIXTURE["comfyui_commit"] == comfyui.COMFYUI_COMMIT


@pytest.mark.parametrize("form", comfyui.FORMS)
def test_each_form_is_a_valid_graph_in_both_formats(form):
    s = spec(form)
    ui, api = comfyui.ui_workflow(s), comfyui.api_workflow(s)
    check_api(api)
    check_ui(ui)
    same_graph(ui, api)
    # they survive JSON as written (ComfyUI reads the files, not these dicts)
    assert json.loads(comfyui.dumps(ui)) == ui and json.loads(comfyui.dumps(api)) == api
    _, ks = sampler(api)
    assert ks["inputs"]["seed"] == 123456789012 and ks["inputs"]["cfg"] == 3.0 and ks["inputs"]["steps"] == 25
    texts = {v["_meta"]["title"]: v["inputs"]["text"] for v in api.values() if v["class_type"] == "CLIPTextEncode"}
    assert texts == {"Positive": "a red circle on a blue background", "Negative": "wrong"}
    assert ui["extra"]["negalora"]["comfyui_commit"] == comfyui.COMFYUI_COMMIT
    ks_ui = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    assert ks_ui["widgets_values"][:2] == [123456789012, "fixed"]  # the recorded seed stays fixed


def test_a_unet_only_lora_is_hooked_onto_the_negative_cond():
    api = comfyui.api_workflow(spec(comfyui.NEGATIVE_COND))
    lora_reaches_only_the_negative(api)
    _, ks = sampler(api)
    props = api[ks["inputs"]["negative"][0]]
    assert props["class_type"] == "ConditioningSetProperties"
    assert api[props["inputs"]["cond_NEW"][0]]["inputs"]["text"] == "wrong"
    hook = api[props["inputs"]["hooks"][0]]
    assert hook["class_type"] == "CreateHookLora" and hook["inputs"]["lora_name"] == "wrong-run-step800.safetensors"
    assert not any(v["class_type"] == "SetClipHooks" for v in api.values())


def test_a_lora_with_text_encoder_layers_hooks_the_negative_clip_and_not_the_positive():
    api = comfyui.api_workflow(spec(comfyui.NEGATIVE_CLIP))
    lora_reaches_only_the_negative(api)
    _, ks = sampler(api)
    negative = api[ks["inputs"]["negative"][0]]
    positive = api[ks["inputs"]["positive"][0]]
    hooked_clip = api[negative["inputs"]["clip"][0]]
    assert hooked_clip["class_type"] == "SetClipHooks" and hooked_clip["inputs"]["apply_to_conds"] is True
    assert api[positive["inputs"]["clip"][0]]["class_type"] == "CheckpointLoaderSimple"
    assert positive["inputs"]["clip"] == ["1", 1]
    assert not any(v["class_type"] == "ConditioningSetProperties" for v in api.values())


def test_a_liked_unet_lora_is_hooked_onto_the_positive_cond():
    api = comfyui.api_workflow(spec(comfyui.POSITIVE_COND, lora_name="kto-run.safetensors", negative=""))
    lora_reaches_only_the_positive(api)
    _, ks = sampler(api)
    props = api[ks["inputs"]["positive"][0]]
    assert props["class_type"] == "ConditioningSetProperties"
    assert api[props["inputs"]["cond_NEW"][0]]["inputs"]["text"] == "a red circle on a blue background"
    hook = api[props["inputs"]["hooks"][0]]
    assert hook["inputs"]["lora_name"] == "kto-run.safetensors" and hook["_meta"]["title"] == "LoRA: positive pass only"
    assert api[ks["inputs"]["negative"][0]]["class_type"] == "CLIPTextEncode"  # the negative is plain
    with pytest.raises(AssertionError, match="reaches the sampler's positive"):
        lora_reaches_only_the_negative(api)  # the check tells the two apart


def test_a_liked_lora_with_text_encoder_layers_hooks_the_positive_clip_and_not_the_negative():
    api = comfyui.api_workflow(spec(comfyui.POSITIVE_CLIP))
    lora_reaches_only_the_positive(api)
    _, ks = sampler(api)
    positive, negative = api[ks["inputs"]["positive"][0]], api[ks["inputs"]["negative"][0]]
    assert api[positive["inputs"]["clip"][0]]["class_type"] == "SetClipHooks"
    assert negative["inputs"]["clip"] == ["1", 1]
    assert comfyui.form_for("positive", True) == comfyui.POSITIVE_CLIP
    assert comfyui.form_for("positive", False) == comfyui.POSITIVE_COND


def test_the_both_pass_form_is_the_plain_lora_loader():
    api = comfyui.api_workflow(spec(comfyui.BOTH_PASSES, strength=0.5))
    _, ks = sampler(api)
    loader = api[ks["inputs"]["model"][0]]
    assert loader["class_type"] == "LoraLoader" and loader["inputs"]["strength_model"] == 0.5
    for name in ("positive", "negative"):  # both prompts encoded through the LoRA's CLIP
        assert loader is api[api[ks["inputs"][name][0]]["inputs"]["clip"][0]]
    assert not any(v["class_type"].startswith("CreateHook") for v in api.values())


def test_a_wrong_graph_fails_the_checks():
    """The checks can fail: a sampler fed by a LoraLoader, a missing input, a mismatched link."""
    api = comfyui.api_workflow(spec(comfyui.BOTH_PASSES))
    with pytest.raises(AssertionError):
        lora_reaches_only_the_negative(api)
    broken = comfyui.api_workflow(spec(comfyui.NEGATIVE_COND))
    del broken["5"]["inputs"]["latent_image"]
    with pytest.raises(AssertionError, match="latent_image"):
        check_api(broken)
    crossed = comfyui.api_workflow(spec(comfyui.NEGATIVE_COND))
    crossed["5"]["inputs"]["model"] = ["1", 1]  # a CLIP into the model input
    with pytest.raises(AssertionError, match="wants MODEL"):
        check_api(crossed)
    ui = comfyui.ui_workflow(spec(comfyui.NEGATIVE_COND))
    ui["nodes"][0]["outputs"][0]["type"] = "CLIP"
    with pytest.raises(AssertionError):
        check_ui(ui)


def test_every_negalora_sampler_maps_to_a_comfyui_sampler_and_scheduler():
    assert set(comfyui.SAMPLERS) == set(SCHEDULERS)
    for sampler_name, scheduler in comfyui.SAMPLERS.values():
        assert sampler_name in FIXTURE["sampler_names"] and scheduler in FIXTURE["scheduler_names"]
    for name in SCHEDULERS:
        check_api(comfyui.api_workflow(spec(comfyui.NEGATIVE_COND, sampler=name)))


def test_upstream_follows_links():
    api = comfyui.api_workflow(spec(comfyui.NEGATIVE_COND))
    assert upstream(api, "7") == {"6", "5", "4", "3", "2", "1", "10", "12"}
