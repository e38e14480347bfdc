"""ComfyUI workflows for an exported LoRA: the UI format (the file that loads when dropped on the
canvas) and the API format (the body of ``POST /prompt``'s ``prompt``), describing one graph.

ComfyUI's LoraLoader patches the model for the whole sampling, so the LoRA acts on both guidance
passes. Its hook nodes (``comfy_extras/nodes_hooks.py``) scope a LoRA to the conds it is attached
to; ``comfy/samplers.py`` runs each hook group as its own batch with the weights patched only for
it. Attached to the negative cond, the LoRA acts on the negative pass only, negalora's default:

- a UNet-only LoRA: CreateHookLora -> ConditioningSetProperties(cond_NEW = the negative
  CLIPTextEncode, hooks) -> the KSampler's ``negative``;
- a LoRA with text-encoder layers: CreateHookLora -> SetClipHooks(apply_to_conds) on a CLIP that
  only the negative CLIPTextEncode uses (its conds carry the hooks, so the UNet part applies too).

The KSampler's ``model`` comes straight from the checkpoint loader in both. A LoRA of what is liked
(KTO, DPO, picks) is hooked the same way on the *positive* cond instead. Where the run measured the
LoRA on both passes best, the graph is the plain LoraLoader one.

Node class names, input names, types and order are those of ComfyUI at ``COMFYUI_COMMIT``; the
test suite holds every graph against a fixture of those schemas. The hook path loads LoRA keys
without logging misses, so the kohya key names must be right (they map one to one in ComfyUI).
"""

import json
from dataclasses import dataclass, field

COMFYUI_COMMIT = "a125cd84b054a57729b5eecab930ca9408719832"  # ComfyUI 0.3.64 (2025-10-12)
UI_VERSION = 0.4

# negalora's samplers (A1111 names) as ComfyUI's (sampler_name, scheduler).
SAMPLERS = {
    "Euler": ("euler", "normal"),
    "Euler a": ("euler_ancestral", "normal"),
    "Heun": ("heun", "normal"),
    "DPM++ 2M": ("dpmpp_2m", "normal"),
    "DPM++ 2M Karras": ("dpmpp_2m", "karras"),
    "DPM++ 2M SDE Karras": ("dpmpp_2m_sde", "karras"),
    "DDIM": ("ddim", "ddim_uniform"),
    "UniPC": ("uni_pc", "normal"),
}

# class -> (socket inputs in ComfyUI's order, required then optional: (name, type); outputs; title)
_NODES = {
    "CheckpointLoaderSimple": ((), ("MODEL", "CLIP", "VAE"), "Load Checkpoint"),
    "CLIPTextEncode": ((("clip", "CLIP"),), ("CONDITIONING",), "CLIP Text Encode (Prompt)"),
    "EmptyLatentImage": ((), ("LATENT",), "Empty Latent Image"),
    "KSampler": (
        (("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")),
        ("LATENT",),
        "KSampler",
    ),
    "VAEDecode": ((("samples", "LATENT"), ("vae", "VAE")), ("IMAGE",), "VAE Decode"),
    "SaveImage": ((("images", "IMAGE"),), (), "Save Image"),
    "LoraLoader": ((("model", "MODEL"), ("clip", "CLIP")), ("MODEL", "CLIP"), "Load LoRA"),
    "CreateHookLora": ((("prev_hooks", "HOOKS"),), ("HOOKS",), "Create Hook LoRA"),
    "SetClipHooks": ((("clip", "CLIP"), ("hooks", "HOOKS")), ("CLIP",), "Set CLIP Hooks"),
    "ConditioningSetProperties": (
        (("cond_NEW", "CONDITIONING"), ("mask", "MASK"), ("hooks", "HOOKS"), ("timesteps", "TIMESTEPS_RANGE")),
        ("CONDITIONING",),
        "Cond Set Props",
    ),
}
_SIZES = {
    "CheckpointLoaderSimple": (315, 98),
    "CLIPTextEncode": (400, 200),
    "EmptyLatentImage": (315, 106),
    "KSampler": (315, 262),
    "VAEDecode": (210, 46),
    "SaveImage": (315, 270),
    "LoraLoader": (315, 126),
    "CreateHookLora": (315, 106),
    "SetClipHooks": (315, 102),
    "ConditioningSetProperties": (315, 150),
}

NEGATIVE_COND = "negative_cond"  # UNet-only LoRA: the hook set on the negative cond
NEGATIVE_CLIP = "negative_clip"  # LoRA with text-encoder layers: the negative's own hooked CLIP
POSITIVE_COND = "positive_cond"  # a liked LoRA, UNet only: the hook set on the positive cond
POSITIVE_CLIP = "positive_clip"  # a liked LoRA with text-encoder layers: the positive's own hooked CLIP
BOTH_PASSES = "both_passes"  # the usual LoraLoader (when the run measured both passes best)
FORMS = (NEGATIVE_COND, NEGATIVE_CLIP, POSITIVE_COND, POSITIVE_CLIP, BOTH_PASSES)
POSITIVE_FORMS = (POSITIVE_COND, POSITIVE_CLIP)


@dataclass(frozen=True)
class WorkflowSpec:
    ckpt_name: str  # the base checkpoint's file name in ComfyUI's models/checkpoints
    lora_name: str  # the LoRA's file name in models/loras
    form: str
    prompt: str
    negative: str  # the token (and the artist's own negative words)
    seed: int
    steps: int
    cfg: float
    sampler: str  # negalora's name
    width: int
    height: int
    strength: float = 1.0
    filename_prefix: str = "negalora"
    extra: dict = field(default_factory=dict)  # recorded in the UI file's "extra"


@dataclass
class _Node:
    id: int
    type: str
    widgets: dict  # widget name -> value, in ComfyUI's order
    links: dict = field(default_factory=dict)  # input name -> (source node id, output slot)
    pos: tuple[int, int] = (0, 0)
    title: str = ""


def form_for(passes: str, text_encoder: bool) -> str:
    if passes == "both":
        return BOTH_PASSES
    if passes == "positive":
        return POSITIVE_CLIP if text_encoder else POSITIVE_COND
    return NEGATIVE_CLIP if text_encoder else NEGATIVE_COND


def _graph(spec: WorkflowSpec) -> list[_Node]:
    if spec.form not in FORMS:
        raise ValueError(f"workflow form {spec.form!r}")
    if spec.sampler not in SAMPLERS:
        raise ValueError(f"sampler {spec.sampler!r} has no ComfyUI equivalent")
    sampler_name, scheduler = SAMPLERS[spec.sampler]
    ckpt = _Node(1, "CheckpointLoaderSimple", {"ckpt_name": spec.ckpt_name}, pos=(40, 300))
    nodes = [ckpt]
    model, clip_pos, clip_neg = (1, 0), (1, 1), (1, 1)
    lora_widgets = {"lora_name": spec.lora_name, "strength_model": spec.strength, "strength_clip": spec.strength}
    if spec.form == BOTH_PASSES:
        nodes.append(_Node(10, "LoraLoader", lora_widgets, {"model": (1, 0), "clip": (1, 1)}, pos=(400, 300)))
        model, clip_pos, clip_neg = (10, 0), (10, 1), (10, 1)
    else:
        positive = spec.form in POSITIVE_FORMS
        title = "LoRA: positive pass only" if positive else "wrong LoRA: negative pass only"
        nodes.append(_Node(10, "CreateHookLora", lora_widgets, pos=(40, 560), title=title))
        if spec.form in (NEGATIVE_CLIP, POSITIVE_CLIP):
            hooked = {"apply_to_conds": True, "schedule_clip": False}
            nodes.append(_Node(11, "SetClipHooks", hooked, {"clip": (1, 1), "hooks": (10, 0)}, pos=(400, 560)))
            if positive:
                clip_pos = (11, 0)
            else:
                clip_neg = (11, 0)
    pos_text = _Node(2, "CLIPTextEncode", {"text": spec.prompt}, {"clip": clip_pos}, pos=(760, 80), title="Positive")
    neg_text = _Node(3, "CLIPTextEncode", {"text": spec.negative}, {"clip": clip_neg}, pos=(760, 340), title="Negative")
    nodes += [pos_text, neg_text]
    positive, negative = (2, 0), (3, 0)
    if spec.form in (NEGATIVE_COND, POSITIVE_COND):
        props = {"strength": 1.0, "set_cond_area": "default"}
        cond = (2, 0) if spec.form == POSITIVE_COND else (3, 0)
        y = 160 if spec.form == POSITIVE_COND else 420
        nodes.append(_Node(12, "ConditioningSetProperties", props, {"cond_NEW": cond, "hooks": (10, 0)}, pos=(1200, y)))
        if spec.form == POSITIVE_COND:
            positive = (12, 0)
        else:
            negative = (12, 0)
    nodes.append(
        _Node(4, "EmptyLatentImage", {"width": spec.width, "height": spec.height, "batch_size": 1}, pos=(760, 600))
    )
    nodes.append(
        _Node(
            5,
            "KSampler",
            {
                "seed": spec.seed,
                "steps": spec.steps,
                "cfg": spec.cfg,
                "sampler_name": sampler_name,
                "scheduler": scheduler,
                "denoise": 1.0,
            },
            {"model": model, "positive": positive, "negative": negative, "latent_image": (4, 0)},
            pos=(1580, 160),
        )
    )
    nodes.append(_Node(6, "VAEDecode", {}, {"samples": (5, 0), "vae": (1, 2)}, pos=(1940, 160)))
    nodes.append(_Node(7, "SaveImage", {"filename_prefix": spec.filename_prefix}, {"images": (6, 0)}, pos=(2200, 160)))
    return nodes


def _widgets_values(node: _Node) -> list:
    values = []
    for name, value in node.widgets.items():
        values.append(value)
        if node.type == "KSampler" and name == "seed":
            values.append("fixed")  # the frontend's control_after_generate: keep the recorded seed
    return values


def api_workflow(spec: WorkflowSpec) -> dict:
    """The API format: node id -> class_type and inputs (widget values and [source id, slot] links)."""
    out = {}
    for node in sorted(_graph(spec), key=lambda n: n.id):
        inputs = dict(node.widgets)
        inputs.update({name: [str(src), slot] for name, (src, slot) in node.links.items()})
        out[str(node.id)] = {
            "class_type": node.type,
            "inputs": inputs,
            "_meta": {"title": node.title or _NODES[node.type][2]},
        }
    return out


def ui_workflow(spec: WorkflowSpec) -> dict:
    """The UI format (litegraph, version 0.4), as ComfyUI's frontend saves it."""
    nodes = sorted(_graph(spec), key=lambda n: n.id)
    links = []  # [id, origin id, origin slot, target id, target slot, type]
    for node in nodes:
        sockets = _NODES[node.type][0]
        for slot, (name, kind) in enumerate(sockets):
            if name in node.links:
                src, out_slot = node.links[name]
                links.append([len(links) + 1, src, out_slot, node.id, slot, kind])
    order = _execution_order(nodes)
    ui_nodes = []
    for node in nodes:
        sockets, outputs, title = _NODES[node.type]
        in_links = {(link[3], link[4]): link[0] for link in links}
        entry = {
            "id": node.id,
            "type": node.type,
            "pos": list(node.pos),
            "size": list(_SIZES[node.type]),
            "flags": {},
            "order": order[node.id],
            "mode": 0,
            "inputs": [
                {"name": name, "type": kind, "link": in_links.get((node.id, slot))}
                for slot, (name, kind) in enumerate(sockets)
            ],
            "outputs": [
                {
                    "name": kind,
                    "type": kind,
                    "links": [link[0] for link in links if link[1] == node.id and link[2] == slot] or None,
                    "slot_index": slot,
                }
                for slot, kind in enumerate(outputs)
            ],
            "properties": {"Node name for S&R": node.type},
            "widgets_values": _widgets_values(node),
        }
        if node.title:
            entry["title"] = node.title
        ui_nodes.append(entry)
    return {
        "last_node_id": max(n.id for n in nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "negalora": {"comfyui_commit": COMFYUI_COMMIT, **spec.extra}},
        "version": UI_VERSION,
    }


def _execution_order(nodes: list[_Node]) -> dict[int, int]:
    """Each node after everything it reads from (litegraph's ``order``)."""
    done: dict[int, int] = {}
    pending = list(nodes)
    while pending:
        for node in pending:
            if all(src in done for src, _ in node.links.values()):
                done[node.id] = len(done)
                pending.remove(node)
                break
        else:  # pragma: no cover - the graphs above have no cycles
            raise ValueError("cycle in workflow graph")
    return done


def dumps(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"
