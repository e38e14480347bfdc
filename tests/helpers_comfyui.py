"""Checks a ComfyUI workflow pair against the node schemas of ComfyUI itself.

``fixtures/comfyui_nodes.json`` was extracted from ComfyUI's source (``nodes.py``,
``comfy_extras/nodes_hooks.py``, ``comfy/samplers.py``) at the commit it names, independently of
negalora's own description of the nodes in ``negalora/export/comfyui.py``.
"""

import json
from pathlib import Path

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "comfyui_nodes.json").read_text(encoding="utf-8"))
NODES = FIXTURE["nodes"]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _rows(cls: str, optional=True) -> list[list]:
    spec = NODES[cls]
    return spec["required"] + (spec.get("optional", []) if optional else [])


def sockets(cls: str) -> list[tuple[str, str]]:
    """Link inputs in ComfyUI's order (required, then optional)."""
    return [(r[0], r[1]) for r in _rows(cls) if r[1] not in WIDGET_TYPES]


def widgets(cls: str) -> list[list]:
    return [r for r in _rows(cls) if r[1] in WIDGET_TYPES]


def _check_value(cls: str, row: list, value) -> None:
    name, kind = row[0], row[1]
    opts = row[2] if len(row) > 2 else {}
    where = f"{cls}.{name}"
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert opts.get("min", value) <= value <= opts.get("max", value), (where, value)
    elif kind == "FLOAT":
        assert isinstance(value, int | float) and not isinstance(value, bool), where
        assert opts.get("min", value) <= value <= opts.get("max", value), (where, value)
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    elif kind == "COMBO":
        options = opts.get("options")
        if isinstance(options, list):
            assert value in options, (where, value)
        else:  # a file name from a models folder
            assert isinstance(value, str) and value.endswith(".safetensors"), (where, value)


def check_api(api: dict) -> None:
    """What ComfyUI's validate_prompt checks: known classes, every required input, links to existing
    nodes whose output type matches, widget values of the right type and range, an output node."""
    assert any(NODES[n["class_type"]].get("output_node") for n in api.values()), "no output node"
    for node_id, node in api.items():
        cls = node["class_type"]
        assert cls in NODES, cls
        known = {r[0]: r for r in _rows(cls)}
        inputs = node["inputs"]
        assert set(inputs) <= set(known), (cls, set(inputs) - set(known))
        for row in NODES[cls]["required"]:
            assert row[0] in inputs, f"{node_id} {cls}: required input {row[0]} missing"
        for name, value in inputs.items():
            row = known[name]
            if row[1] in WIDGET_TYPES:
                _check_value(cls, row, value)
                continue
            assert isinstance(value, list) and len(value) == 2, (cls, name, value)
            src, slot = value
            assert src in api, (cls, name, src)
            outputs = NODES[api[src]["class_type"]]["output"]
            assert outputs[slot] == row[1], f"{cls}.{name} wants {row[1]}, gets {outputs[slot]}"


def check_ui(ui: dict) -> None:
    """The UI format as ComfyUI's frontend saves it (version 0.4): nodes with their link inputs in
    ComfyUI's order, outputs, widget values in widget order (KSampler's seed control after the
    seed), links whose ends and types agree with both nodes."""
    for key in ("last_node_id", "last_link_id", "nodes", "links", "version"):
        assert key in ui, key
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert ui["last_node_id"] == max(nodes) and ui["last_link_id"] == max((link[0] for link in ui["links"]), default=0)
    for n in ui["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "properties"):
            assert key in n, (n["type"], key)
        cls = n["type"]
        assert [(i["name"], i["type"]) for i in n["inputs"]] == sockets(cls), cls
        spec = NODES[cls]
        assert [(o["name"], o["type"]) for o in n["outputs"]] == list(
            zip(spec["output_name"], spec["output"], strict=True)
        ), cls
        values = list(n["widgets_values"])
        order = spec["widgets_values_order"]
        assert len(values) == len(order), (cls, values, order)
        by_name = {r[0]: r for r in widgets(cls)}
        for name, value in zip(order, values, strict=True):
            if name == "control_after_generate":
                assert value in ("fixed", "increment", "decrement", "randomize"), value
            else:
                _check_value(cls, by_name[name], value)
        for r in NODES[cls]["required"]:  # every required link input is connected
            if r[1] not in WIDGET_TYPES:
                assert next(i for i in n["inputs"] if i["name"] == r[0])["link"] is not None, (cls, r[0])
    ids = set()
    for link_id, origin, origin_slot, target, target_slot, kind in ui["links"]:
        ids.add(link_id)
        out = nodes[origin]["outputs"][origin_slot]
        into = nodes[target]["inputs"][target_slot]
        assert out["type"] == into["type"] == kind, (link_id, out, into, kind)
        assert link_id in out["links"] and into["link"] == link_id
    assert len(ids) == len(ui["links"])
    for n in ui["nodes"]:  # litegraph's order: every node after what it reads
        for i in n["inputs"]:
            if i["link"] is not None:
                origin = next(link[1] for link in ui["links"] if link[0] == i["link"])
                assert nodes[origin]["order"] < n["order"]


def api_from_ui(ui: dict) -> dict:
    """The API graph that the UI file describes (what the frontend's "Export (API)" would write)."""
    out = {}
    for n in ui["nodes"]:
        names = [w for w in NODES[n["type"]]["widgets_values_order"] if w != "control_after_generate"]
        values = [
            v
            for w, v in zip(NODES[n["type"]]["widgets_values_order"], n["widgets_values"], strict=True)
            if w != "control_after_generate"
        ]
        inputs = dict(zip(names, values, strict=True))
        for i in n["inputs"]:
            if i["link"] is not None:
                link = next(link for link in ui["links"] if link[0] == i["link"])
                inputs[i["name"]] = [str(link[1]), link[2]]
        out[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return out


def same_graph(ui: dict, api: dict) -> None:
    bare = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    assert api_from_ui(ui) == bare


def upstream(api: dict, node_id: str) -> set[str]:
    """Every node that ``node_id`` reads from, directly or not."""
    seen, todo = set(), [node_id]
    while todo:
        for value in api[todo.pop()]["inputs"].values():
            if isinstance(value, list) and value[0] not in seen:
                seen.add(value[0])
                todo.append(value[0])
    return seen


def sampler(api: dict) -> tuple[str, dict]:
    (found,) = [(k, v) for k, v in api.items() if v["class_type"] == "KSampler"]
    return found


def lora_reaches_only(api: dict, wanted: str) -> None:
    """The LoRA (a hook) reaches the sampler through its ``wanted`` conditioning input alone
    (positive or negative), and the sampler's model is the checkpoint's own."""
    _, ks = sampler(api)
    hooks = {k for k, v in api.items() if v["class_type"] in ("CreateHookLora", "CreateHookLoraModelOnly")}
    assert len(hooks) == 1
    assert not any(v["class_type"].startswith("LoraLoader") for v in api.values())
    model_src = ks["inputs"]["model"]
    assert api[model_src[0]]["class_type"] == "CheckpointLoaderSimple" and model_src[1] == 0
    other = "negative" if wanted == "positive" else "positive"
    for name in (other, "latent_image", "model"):
        src = ks["inputs"][name][0]
        assert not (({src} | upstream(api, src)) & hooks), f"the LoRA reaches the sampler's {name}"
    target = ks["inputs"][wanted][0]
    assert ({target} | upstream(api, target)) & hooks, f"the LoRA does not reach the {wanted}"


def lora_reaches_only_the_negative(api: dict) -> None:
    lora_reaches_only(api, "negative")


def lora_reaches_only_the_positive(api: dict) -> None:
    lora_reaches_only(api, "positive")
