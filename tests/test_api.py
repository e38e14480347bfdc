"""The requests that cross the worker pipe (negalora.api): one wire format for every kind, that
survives JSON exactly and names what is wrong with a malformed message."""

import json

import pytest

from negalora import api
from negalora.errors import NegaloraError
from negalora.train.config import TrainConfig

REQUESTS = [
    api.GenerateJob(
        (
            api.GenerateRequest(("a red circle", "a cat"), negative="wrong", count=3, seed=7, width=64, batch_size=2),
            api.GenerateRequest(("b",), lora="/x/w.safetensors", lora_passes=api.BOTH, batch_size=None),
        ),
        reject=True,
        reasons=("hands", "text"),
    ),
    api.CompareRequest(prompts=("a",), seeds=(1, 5), kind=api.SCALE_SWEEP, scales=(0.0, 0.5), checkpoint_steps=(4,)),
    api.TrainRequest(TrainConfig(rank=8, steps=40, extra=("/a", "/b"))),
    api.TrainRequest(resume="20261202-1200-abcd"),
    api.ExportRequest("run1", fmt="diffusers", step=4, out="/tmp/x.safetensors", verify=False),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_every_request_survives_the_pipe_exactly(request_):
    message = api.job_message("j1", "demo", request_)
    line = json.dumps(message)  # the pipe carries JSON lines
    back = api.request_of(json.loads(line))
    assert back == request_ and type(back) is type(request_)
    assert message["kind"] in api.JOB_KINDS and message["model"] == "demo" and message["job"] == "j1"


def test_a_malformed_message_is_refused_with_its_reason():
    with pytest.raises(NegaloraError, match="unknown field.*colour"):
        api.request_of({"kind": "compare", "request": {"prompts": ["a"], "colour": "red"}})
    with pytest.raises(NegaloraError, match="job kind 'paint'"):
        api.request_of({"kind": "paint", "request": {}})
    with pytest.raises(NegaloraError, match="ExportRequest"):
        api.request_of({"kind": "export", "request": {}})  # run_id is required
    with pytest.raises(TypeError):
        api.job_message("j1", "demo", {"kind": "generate"})  # a dict is not a request


def test_a_batch_size_outside_one_to_the_maximum_is_refused():
    api.check_request(api.GenerateRequest(("a",), batch_size=api.MAX_BATCH))
    for bad in (0, api.MAX_BATCH + 1):
        with pytest.raises(NegaloraError, match=f"batch size {bad}"):
            api.check_request(api.GenerateRequest(("a",), batch_size=bad))


@pytest.mark.parametrize(
    "kind, request_, field",
    [
        ("generate", {"requests": [{"prompts": "a cat"}]}, "GenerateRequest.prompts"),  # text, not a list
        ("generate", {"requests": [{"prompts": ["a"], "steps": "25"}]}, "GenerateRequest.steps"),
        ("generate", {"requests": [{"prompts": ["a"], "count": True}]}, "GenerateRequest.count"),
        ("compare", {"lora": 5}, "CompareRequest.lora"),
        ("export", {"run_id": "r", "verify": "yes"}, "ExportRequest.verify"),
        ("train", {"config": ["rank", 4]}, "TrainConfig"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_its_field(kind, request_, field):
    with pytest.raises(NegaloraError, match=field.replace(".", r"\.")):
        api.request_of({"kind": kind, "request": request_})


def test_numbers_and_optional_fields_keep_their_meaning():
    r = api.request_of({"kind": "generate", "request": {"requests": [{"prompts": ["a"], "guidance": 7, "seed": None}]}})
    (g,) = r.requests
    assert g.guidance == 7.0 and isinstance(g.guidance, float) and g.seed is None
