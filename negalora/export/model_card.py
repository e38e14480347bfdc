"""The model card written beside an exported LoRA: how it was trained, what it was checked against,
and how to use it, leading with the way that measured best for this run (its own comparisons and
blind votes, else the demo world's numbers, labelled as such). A "wrong" LoRA is used the other way
round from most LoRAs: its token goes in the *negative* prompt, and it works best on the negative
guidance pass only, which A1111 and Forge cannot do; every way is listed with its numbers, and a
way that measured worse than base says so beside it."""

import json
from dataclasses import dataclass
from pathlib import Path

from negalora.demo_world import published
from negalora.export import comfyui
from negalora.export import evidence as ev
from negalora.export.source import ExportSource

SNIPPET_MAX_LINES = 15


@dataclass(frozen=True)
class Usage:
    """The concrete recipe the card's examples and the workflows use."""

    prompt: str
    seed: int
    steps: int
    guidance: float
    scheduler: str
    width: int
    height: int
    base_kind: str  # folder | file | hub | demo
    base_path: str  # what diffusers loads: a folder, a file, or a hub id
    ckpt_name: str  # the base checkpoint's file name in ComfyUI (a marked placeholder when unknown)
    ckpt_known: bool
    lora_dir: str  # the folder holding the exported file
    lora_file: str  # the exported file's name
    comfy_lora_name: str  # its name under ComfyUI's models/loras
    workflow: str  # the UI-format file's name
    api_workflow: str
    workflow_form: str
    run_id: str = ""
    step: int = 0
    prompt_set: str = "default"


_SCHEDULER_CLASSES = {
    "Euler": ("EulerDiscreteScheduler", ""),
    "Euler a": ("EulerAncestralDiscreteScheduler", ""),
    "Heun": ("HeunDiscreteScheduler", ""),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", ', algorithm_type="dpmsolver++"'),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", ', algorithm_type="dpmsolver++", use_karras_sigmas=True'),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        ', algorithm_type="sde-dpmsolver++", use_karras_sigmas=True',
    ),
    "DDIM": ("DDIMScheduler", ""),
    "UniPC": ("UniPCMultistepScheduler", ""),
}


def diffusers_snippet(u: Usage, token: str) -> str:
    """At most 15 lines that render the card's recipe with the LoRA on the negative pass."""
    cls, extra = _SCHEDULER_CLASSES[u.scheduler]
    loader = "from_single_file" if u.base_kind == "file" else "from_pretrained"
    lines = [
        "import torch",
        f"from diffusers import StableDiffusionXLPipeline, {cls}",
        "from negalora import negative_pass  # installed with negalora",
        "",
        "cuda = torch.cuda.is_available()",
        f"pipe = StableDiffusionXLPipeline.{loader}({json.dumps(u.base_path)}, "
        'dtype=torch.bfloat16 if cuda else torch.float32).to("cuda" if cuda else "cpu")',
        f"pipe.scheduler = {cls}.from_config(pipe.scheduler.config{extra})",
        f"pipe.load_lora_weights({json.dumps(u.lora_dir)}, weight_name={json.dumps(u.lora_file)})",
        "with negative_pass(pipe):  # the LoRA acts on the negative guidance pass only",
        f"    image = pipe({json.dumps(u.prompt)}, negative_prompt={json.dumps(token)}, "
        f"num_inference_steps={u.steps}, guidance_scale={u.guidance:g},",
        f"                 width={u.width}, height={u.height}, "
        f'generator=torch.Generator("cpu").manual_seed({u.seed})).images[0]',
        'image.save("negative-pass.png")',
    ]
    assert len(lines) <= SNIPPET_MAX_LINES
    return "\n".join(lines)


def _ways_table(e: ev.Evidence) -> str:
    if e.source == "demo_world":
        head = "| way | measured on the demo world |\n|---|---|\n"
    else:
        head = "| way | measured on this run |\n|---|---|\n"
    rows = []
    for way in e.order:
        numbers = e.numbers(way)
        against = e.against_base(way) if way != ev.BASE else None
        shape = e.shape_below_base(way)
        if against == "worse":
            numbers += " — **worse than base**" + (
                f" (no fewer defects, and the asked shape {shape[1] - shape[0]} points less often)" if shape else ""
            )
        elif against == "higher":
            numbers += " — measured worse than base, but the 95% intervals overlap: not yet distinguishable"
        elif shape:
            numbers += f" — the asked shape {shape[1] - shape[0]} points less often than base"
        best = " **(best)**" if way == e.best else ""
        rows.append(f"| {e.label(way)}{best} | {numbers} |")
    return head + "\n".join(rows) + "\n"


def _lead(e: ev.Evidence, u: Usage) -> str:
    if e.source == "demo_world":
        where = (
            "**This run has not been measured yet**, so these are the numbers of negalora's **demo world** "
            f"({published.SETUP}; report `{published.REPORT}`, made by `{published.COMMAND}`). Rate the cells of the "
            "run's comparisons or cast blind votes in negalora, export again, and this card gives the run's own."
        )
    elif e.decided_by == "ratings":
        where = "Measured on **this run's own comparisons**: your verdicts on their cells."
    else:
        where = "Measured on **this run's blind votes**."
    if e.best == ev.NEGATIVE_PASS:
        way = (
            "The LoRA works best on the **negative guidance pass only**, with `wrong` in the negative prompt. "
            f"ComfyUI does that with `{u.workflow}`, diffusers with `negative_pass()` (both below); A1111 and Forge "
            "cannot (their section gives the best measured fallback)."
        )
    elif e.best == ev.BOTH_PASSES:
        way = (
            "The LoRA measured best on **both guidance passes** (the way every UI loads a LoRA), with `wrong` in "
            f"the negative prompt; `{u.workflow}` uses a plain Load LoRA node accordingly."
        )
    else:
        way = (
            f"**No way of using the LoRA beat {e.short(e.best)}**: the measurement says to leave the LoRA out. "
            "The counts may be small; compare more prompts and seeds before you trust it either way."
        )
    close = e.undistinguished()
    if close and e.decided_by == "votes":
        way += (
            f" It won most of its blind votes, but against {', '.join(e.short(w) for w in close)} the 95% interval "
            "of its share still holds 50%: **not yet distinguishable**. Cast more blind votes and export again "
            "before you trust the difference."
        )
    elif close:
        way += (
            f" That is the lowest measured rate, but its 95% interval overlaps that of "
            f"{', '.join(e.short(w) for w in close)}: **not yet distinguishable**. Rate more cells (or cast more "
            "blind votes) and export again before you trust the difference."
        )
    unmatched = e.not_compared()
    if unmatched:
        way += (
            f" It was never put directly against {', '.join(e.short(w) for w in unmatched)} in a blind vote, so "
            "that comparison is not measured."
        )
    return f"{where}\n\n{way}"


def _leave_out(e: ev.Evidence) -> str:
    """The caveat a usage section carries when the run measured the LoRA no better than leaving it out."""
    if e.best in e.lora_ways:
        return ""
    if any(w in e.lora_ways for w in (*e.undistinguished(), *e.not_compared())):
        return (
            f"This run measured no way of using the LoRA better than {e.short(e.best)}, though the differences are "
            "not yet distinguishable: you may leave it out until more ratings say otherwise. Here is how to use it.\n\n"
        )
    return (
        f"**This run measured no way of using the LoRA better than {e.short(e.best)}: leave it out.** "
        "Here is how, should you try it anyway.\n\n"
    )


def _a1111(e: ev.Evidence, u: Usage, lora_name: str, token: str) -> str:
    both = e.numbers(ev.BOTH_PASSES)
    worse = e.worse_than_base(ev.BOTH_PASSES)
    where = "the demo world" if e.source == "demo_world" else "this run"
    lines = [
        "AUTOMATIC1111 and Forge apply every LoRA on **both** guidance passes; neither has a negative-pass-only "
        "mode (composable-lora's options add the negative pass to a LoRA of the prompt).",
        f"On {where}, that way measured: {both}."
        + (f" **That is worse than using no LoRA at all on {where}.**" if worse else "")
        + (
            (
                " It lost more blind votes against no LoRA than it won, though not beyond the 95% interval."
                if e.decided_by == "votes"
                else " That is a higher rate than using no LoRA at all, though the 95% intervals overlap."
            )
            if e.against_base(ev.BOTH_PASSES) == "higher"
            else ""
        ),
    ]
    s = e.strength
    if s.how == "marked":
        lines.append(
            f"Best fallback: strength **{s.scale:g}**, the one you marked best (`negalora mark-best --scale`)."
        )
    elif s.how == "sweep" and s.scale is not None:
        tally = s.sweep[s.scale]
        lines.append(
            f"Best fallback: strength **{s.scale:g}**, the best of this run's strength sweep on both passes "
            f"({tally.describe()})."
        )
    else:
        lines.append(
            "This run has no rated strength sweep on both passes, so no strength can be recommended yet. Render one "
            f"(the Export page's *Render a strength sweep*, or `negalora compare --lora {u.run_id} --step {u.step} "
            f"--scales 0,0.25,0.5,0.75,1 --lora-passes both --prompt-set {u.prompt_set}`), rate its cells (or "
            f"`negalora mark-best {u.run_id} --scale X`), and export again."
        )
    scale = s.scale if s.scale else 1.0
    if s.scale == 0:
        token_worse = e.worse_than_base(ev.TOKEN_ONLY)
        lines.append(
            "At strength 0 the LoRA does nothing: in A1111 and Forge, leave it out"
            + (", and `wrong` too: alone it measured worse than base." if token_worse else ".")
        )
        if s.nonzero is not None:
            scale = s.nonzero
            lines.append(
                f"The best strength above 0 that this run's sweep measured is **{scale:g}** "
                f"({s.sweep[scale].describe()}); the tag below uses it."
            )
    lines.append(
        f"To use it there anyway: copy `{u.lora_file}` into `models/Lora`, add `<lora:{lora_name}:{scale:g}>` anywhere "
        f"in the prompt (it only loads the LoRA) and write `{token}` in the *Negative prompt* box."
    )
    return _leave_out(e) + "\n\n".join(lines)


def _comfyui(e: ev.Evidence, u: Usage, fmt: str, token: str) -> str:
    if u.workflow_form == comfyui.BOTH_PASSES:
        graph = "a plain **Load LoRA** (LoraLoader) between Load Checkpoint and the rest: the LoRA on both passes"
    elif u.workflow_form == comfyui.NEGATIVE_CLIP:
        graph = (
            "**Create Hook LoRA** → **Set CLIP Hooks** on a CLIP that only the *Negative* CLIP Text Encode uses "
            "(its conditioning carries the hook, so the UNet part acts on the negative pass only; the positive "
            "prompt is encoded with the plain CLIP); the KSampler's model comes straight from Load Checkpoint"
        )
    else:
        graph = (
            "**Create Hook LoRA** → **Cond Set Props** (`hooks`) on the *Negative* CLIP Text Encode → the KSampler's "
            "`negative`; the KSampler's model comes straight from Load Checkpoint, so the positive pass never sees "
            "the LoRA"
        )
    ckpt = (
        f"`{u.ckpt_name}` is the run's base checkpoint."
        if u.ckpt_known
        else f"`{u.ckpt_name}` is a **placeholder**: pick your SDXL base in Load Checkpoint (the run's base was not a "
        "single checkpoint file)."
    )
    lines = [
        f"Drop `{u.workflow}` on the ComfyUI canvas (or paste it: *Copy ComfyUI workflow* on negalora's Export page). "
        f"The graph: {graph}. Copy the LoRA into `models/loras` as `{u.comfy_lora_name}`. {ckpt} "
        f"The negative text is `{token}`; prompt, seed, steps, CFG, sampler and size are this card's test recipe.",
        f"`{u.api_workflow}` is the same graph in the API format: the value of `prompt` in a `POST /prompt` body.",
        f"The hook nodes are marked experimental in ComfyUI; the graph follows ComfyUI's node schemas at commit "
        f"`{comfyui.COMFYUI_COMMIT[:10]}` (0.3.64). A hooked negative runs as its own batch, so each step costs two "
        "UNet passes instead of one batched pass.",
    ]
    if fmt == "diffusers":
        lines.append(
            "**This file has diffusers key names, and ComfyUI (at that commit) does not map their attention layers "
            "(`…attn1.to_k` and the like): it would load only part of the LoRA, and the hook nodes do so without a "
            "warning. For ComfyUI, export in kohya format (`negalora export RUN --format kohya`).**"
        )
    return _leave_out(e) + "\n\n".join(lines)


def _trained_modules(c) -> str:
    targets = "UNet attention (to_q, to_k, to_v, to_out.0)" + (" and feed-forward" if c.feed_forward else "")
    if c.train_text_encoder:
        targets += "; both text encoders' attention (q, k, v, out proj)"
    return targets


def model_card(
    *,
    name: str,
    fmt: str,
    file_name: str,
    source: ExportSource,
    metadata: dict[str, str],
    alpha: float,
    verification: dict,
    file_sha256: str,
    grid_name: str | None,
    evidence: ev.Evidence,
    usage: Usage,
) -> str:
    c = source.config
    token = c.token
    targets = _trained_modules(c)
    reasons = ", with reason tags" if c.captions_with_reasons else ""
    tags = json.loads(metadata.get("ss_tag_frequency", "{}")).get("rejects", {})
    grid = _grid(grid_name)
    lora_name = Path(file_name).stem if fmt == "kohya" else name
    demo_note = _demo_note(usage)
    return f"""# {name}

A "wrong" LoRA for **SDXL base 1.0**, made with negalora from images that were
rejected while generating. Use it with `{token}` in the **negative** prompt.
{demo_note}
| | |
|---|---|
| File | `{file_name}` ({fmt} format) |
| Training images | {source.images} rejected images, captioned `{token}`{reasons} |
| Steps | {source.step} of {c.steps} (run `{source.run_id}`) |
| Rank / alpha | {c.rank} / {alpha:g} (scale {alpha / c.rank:g}) |
| Learning rate | {c.lr:g} ({c.lr_schedule}), batch {c.batch} × {c.grad_accum}, seed {c.seed} |
| Trained modules | {targets} |
| Resolution | {metadata["modelspec.resolution"]} |
| Base model | {source.base_name} (negalora model hash `{source.base_hash[:12]}`) |
| Tags | {", ".join(f"{t} ×{n}" for t, n in tags.items()) or "-"} |
| ComfyUI workflows | `{usage.workflow}` (drop on the canvas), `{usage.api_workflow}` (API) |
{grid}
## How to use it: what measured best

{_lead(evidence, usage)}

{_ways_table(evidence)}
Test recipe used below: `{usage.prompt}`, seed {usage.seed}, {usage.steps} steps, CFG {usage.guidance:g},
{usage.scheduler}, {usage.width}×{usage.height}.

### ComfyUI

{_comfyui(evidence, usage, fmt, token)}

### diffusers

{_leave_out(evidence)}`load_lora_weights` applies the LoRA on both passes; negalora's `negative_pass`
(the code negalora renders with) applies it on the negative pass only:

```python
{diffusers_snippet(usage, token)}
```

Without the `with` block the LoRA acts on both passes ({evidence.numbers(ev.BOTH_PASSES)}{
        "; worse than base" if evidence.worse_than_base(ev.BOTH_PASSES) else ""
    }).

### AUTOMATIC1111 / Forge

{_a1111(evidence, usage, lora_name, token)}

### negalora

`negalora generate "{usage.prompt}" --negative {token} --lora "{
        Path(usage.lora_dir) / file_name
    }" --lora-passes negative`
(the negative pass is the default).

{_check_and_hashes(verification, file_sha256, metadata, source)}"""


def _grid(grid_name: str | None) -> str:
    return (
        f"\n## Comparison grid\n\n![The run's latest comparison]({grid_name})\n"
        if grid_name
        else "\n(No comparison grid yet: run a comparison in negalora and export again to include one.)\n"
    )


def _demo_note(usage: Usage) -> str:
    return (
        "\nThis LoRA was trained on negalora's **demo model** (a tiny SDXL-shaped model of coloured shapes, "
        "32 px); it fits that model only. The ComfyUI checkpoint name is a placeholder for the same reason.\n"
        if usage.base_kind == "demo"
        else ""
    )


def _check_and_hashes(verification: dict, file_sha256: str, metadata: dict[str, str], source: ExportSource) -> str:
    if verification.get("verified"):
        negative = verification["negative"]
        check = (
            f"Before it was put in place, the file was reloaded with diffusers into the base model: "
            f"{verification['modules_loaded']} of {verification['modules_in_file']} LoRA modules loaded with the "
            f"checkpoint's weights and scale, and a {verification['size']}×{verification['size']} image "
            f"(seed {verification['seed']}, {verification['steps']} steps"
            + (f", negative `{negative}`" if negative else "")
            + f") differed from the app's render of the checkpoint by at most {verification['max_pixel_diff']}/255."
        )
    else:
        check = "The file was written without the reload check (exported with `--no-verify`)."
    return f"""## Check and hashes

{check}

- `sha256` of the whole file: `{file_sha256}`
- `sshs_model_hash` (A1111's LoRA hash; sha256 of the tensor data after the header):
  `{metadata["sshs_model_hash"]}`
- `modelspec.hash_sha256`: the same hash with a `0x` prefix
- `sshs_legacy_hash`: kohya's legacy short hash, computed as kohya computes it (on a copy with only
  the `ss_*` header keys): `{metadata["sshs_legacy_hash"]}`
- Checkpoint it was exported from: `{source.path.name}`, sha256 `{source.sha256}`
- Base model hash: negalora's identity hash of the model (for a single file, its sha256; for a
  folder or the demo model, the sha256 of its UNet weight files' hashes): `{source.base_hash}`
"""


# -- a LoRA of what is liked (KTO, DPO, picks): the positive pass --------------------------------


def liked_snippet(u: Usage) -> str:
    """At most 15 lines that render the card's recipe with the LoRA on the positive pass."""
    cls, extra = _SCHEDULER_CLASSES[u.scheduler]
    loader = "from_single_file" if u.base_kind == "file" else "from_pretrained"
    lines = [
        "import torch",
        f"from diffusers import StableDiffusionXLPipeline, {cls}",
        "from negalora import positive_pass  # installed with negalora",
        "",
        "cuda = torch.cuda.is_available()",
        f"pipe = StableDiffusionXLPipeline.{loader}({json.dumps(u.base_path)}, "
        'dtype=torch.bfloat16 if cuda else torch.float32).to("cuda" if cuda else "cpu")',
        f"pipe.scheduler = {cls}.from_config(pipe.scheduler.config{extra})",
        f"pipe.load_lora_weights({json.dumps(u.lora_dir)}, weight_name={json.dumps(u.lora_file)})",
        "with positive_pass(pipe):  # the LoRA acts on the positive guidance pass only",
        f"    image = pipe({json.dumps(u.prompt)}, num_inference_steps={u.steps}, guidance_scale={u.guidance:g},",
        f"                 width={u.width}, height={u.height}, "
        f'generator=torch.Generator("cpu").manual_seed({u.seed})).images[0]',
        'image.save("positive-pass.png")',
    ]
    assert len(lines) <= SNIPPET_MAX_LINES
    return "\n".join(lines)


_LIKED_WAY = {
    ev.POSITIVE_PASS: (
        "The LoRA works best on the **positive guidance pass only**, with the prompt unchanged and no negative "
        "token. ComfyUI does that with `{workflow}`, diffusers with `positive_pass()` (both below); A1111 and "
        "Forge cannot (their section gives what both passes measured)."
    ),
    ev.WITH_WRONG: (
        "The LoRA works best on the **positive guidance pass**, with a `wrong` LoRA beside it on the negative "
        "pass and `wrong` in the negative prompt (negalora: `--lora-passes positive --negative-lora "
        "wrong.safetensors --negative wrong`). `{workflow}` hooks this LoRA onto the positive pass; the `wrong` "
        "LoRA's own export hooks it onto the negative."
    ),
    ev.BOTH_PASSES: (
        "The LoRA measured best on **both guidance passes** (the way every UI loads a LoRA), the prompt "
        "unchanged; `{workflow}` uses a plain Load LoRA node accordingly."
    ),
}


def _liked_lead(e: ev.Evidence, u: Usage) -> str:
    if e.source == "demo_world":
        where = (
            "**This run has not been measured yet**, so these are the numbers of the same kind of LoRA in negalora's "
            f"**demo world** ({published.PREFERENCE_SETUP}; report `{published.PREFERENCE_REPORT}`, made by "
            f"`{published.PREFERENCE_COMMAND}`). Rate the cells of the run's comparisons or cast blind votes in "
            "negalora, export again, and this card gives the run's own."
        )
    elif e.decided_by == "ratings":
        where = "Measured on **this run's own comparisons**: your verdicts on their cells."
    else:
        where = "Measured on **this run's blind votes**."
    if e.best in _LIKED_WAY:
        way = _LIKED_WAY[e.best].format(workflow=u.workflow)
    elif e.best == ev.WRONG_NEGATIVE:
        way = (
            f"**No way of using this LoRA beat {e.short(e.best)}** (a LoRA trained on the rejects): the "
            "measurement says to use that one instead, and leave this one out."
        )
    else:
        way = (
            f"**No way of using the LoRA beat {e.short(e.best)}**: the measurement says to leave the LoRA out. "
            "The counts may be small; compare more prompts and seeds before you trust it either way."
        )
    shape = e.shape_below_base(e.best)
    if shape:
        way += f" **But that way draws the asked shape {shape[1] - shape[0]:g} points less often than base** " + (
            f"({shape[0]:g}% against {shape[1]:g}%)"
            + (": it pulls images toward what was liked, away from the prompt." if e.best in e.lora_ways else ".")
        )
    close = e.undistinguished()
    if close:
        way += (
            f" Its measured {'share of blind votes' if e.decided_by == 'votes' else 'rate'} cannot yet be told from "
            f"that of {', '.join(e.short(w) for w in close)} (the 95% intervals overlap): **not yet "
            "distinguishable**. Rate more cells (or cast more blind votes) and export again before you trust it."
        )
    unmatched = e.not_compared()
    if unmatched:
        way += (
            f" It was never put directly against {', '.join(e.short(w) for w in unmatched)} in a blind vote, so "
            "that comparison is not measured."
        )
    return f"{where}\n\n{way}"


def _liked_comfyui(e: ev.Evidence, u: Usage, fmt: str) -> str:
    if u.workflow_form == comfyui.BOTH_PASSES:
        graph = "a plain **Load LoRA** (LoraLoader) between Load Checkpoint and the rest: the LoRA on both passes"
    elif u.workflow_form == comfyui.POSITIVE_CLIP:
        graph = (
            "**Create Hook LoRA** → **Set CLIP Hooks** on a CLIP that only the *Positive* CLIP Text Encode uses "
            "(its conditioning carries the hook, so the UNet part acts on the positive pass only; the negative "
            "prompt is encoded with the plain CLIP); the KSampler's model comes straight from Load Checkpoint"
        )
    else:
        graph = (
            "**Create Hook LoRA** → **Cond Set Props** (`hooks`) on the *Positive* CLIP Text Encode → the KSampler's "
            "`positive`; the KSampler's model comes straight from Load Checkpoint, so the negative pass never sees "
            "the LoRA"
        )
    ckpt = (
        f"`{u.ckpt_name}` is the run's base checkpoint."
        if u.ckpt_known
        else f"`{u.ckpt_name}` is a **placeholder**: pick your SDXL base in Load Checkpoint (the run's base was not a "
        "single checkpoint file)."
    )
    lines = [
        f"Drop `{u.workflow}` on the ComfyUI canvas (or paste it: *Copy ComfyUI workflow* on negalora's Export page). "
        f"The graph: {graph}. Copy the LoRA into `models/loras` as `{u.comfy_lora_name}`. {ckpt} "
        "The negative text is empty; prompt, seed, steps, CFG, sampler and size are this card's test recipe.",
        f"`{u.api_workflow}` is the same graph in the API format: the value of `prompt` in a `POST /prompt` body.",
        "To add a `wrong` LoRA on the negative pass as well, give the *Negative* text `wrong` and hook that LoRA onto "
        "it as its own export's workflow does (a second **Create Hook LoRA** → **Cond Set Props** on the negative).",
        f"The hook nodes are marked experimental in ComfyUI; the graph follows ComfyUI's node schemas at commit "
        f"`{comfyui.COMFYUI_COMMIT[:10]}` (0.3.64). A hooked cond runs as its own batch, so each step costs two "
        "UNet passes instead of one batched pass.",
    ]
    if fmt == "diffusers":
        lines.append(
            "**This file has diffusers key names, and ComfyUI (at that commit) does not map their attention layers "
            "(`…attn1.to_k` and the like): it would load only part of the LoRA, and the hook nodes do so without a "
            "warning. For ComfyUI, export in kohya format (`negalora export RUN --format kohya`).**"
        )
    return _leave_out(e) + "\n\n".join(lines)


def _liked_a1111(e: ev.Evidence, u: Usage, lora_name: str) -> str:
    where = "the demo world" if e.source == "demo_world" else "this run"
    both = e.numbers(ev.BOTH_PASSES)
    lines = [
        "AUTOMATIC1111 and Forge apply every LoRA on **both** guidance passes; neither has a positive-pass-only mode.",
        f"On {where}, that way was not measured for this kind of LoRA."
        if both.startswith("not measured")
        else f"On {where}, that way measured: {both}."
        + (f" **That is worse than using no LoRA at all on {where}.**" if e.worse_than_base(ev.BOTH_PASSES) else ""),
    ]
    s = e.strength
    scale = 1.0
    if s.how == "marked" and s.scale is not None:
        scale = s.scale
        lines.append(f"Strength **{s.scale:g}** is the one you marked best (`negalora mark-best --scale`).")
    elif s.how == "sweep" and s.scale is not None:
        scale = s.scale if s.scale else (s.nonzero or 1.0)
        lines.append(
            f"Strength **{s.scale:g}** is the best of this run's strength sweep on both passes "
            f"({s.sweep[s.scale].describe()})"
            + (".", f"; at 0 the LoRA does nothing, so the tag below uses the best above 0, {scale:g}.")[not s.scale]
        )
    else:
        lines.append(
            "This run has no rated strength sweep on both passes; the tag below is at full strength. To measure one: "
            f"`negalora compare --lora {u.run_id} --step {u.step} --scales 0,0.25,0.5,0.75,1 --lora-passes both "
            f"--prompt-set {u.prompt_set}`, rate its cells, and export again."
        )
    lines.append(
        f"To use it there: copy `{u.lora_file}` into `models/Lora` and add `<lora:{lora_name}:{scale:g}>` anywhere in "
        "the prompt (it only loads the LoRA); the prompt stays as it was and no token is needed."
    )
    return _leave_out(e) + "\n\n".join(lines)


def _liked_negalora(e: ev.Evidence, u: Usage, file_name: str) -> str:
    path = Path(u.lora_dir) / file_name
    if e.best == ev.BOTH_PASSES:
        return f'`negalora generate "{u.prompt}" --lora "{path}" --lora-passes both`'
    out = f'`negalora generate "{u.prompt}" --lora "{path}" --lora-passes positive`'
    if e.best == ev.WITH_WRONG:
        out += (
            "\n\nWith a `wrong` LoRA on the negative pass (the way that measured best): "
            f'`negalora generate "{u.prompt}" '
            f'--lora "{path}" --lora-passes positive --negative-lora wrong.safetensors --negative wrong`'
        )
    return out


def liked_model_card(
    *,
    name: str,
    fmt: str,
    file_name: str,
    source: ExportSource,
    metadata: dict[str, str],
    alpha: float,
    verification: dict,
    file_sha256: str,
    grid_name: str | None,
    evidence: ev.Evidence,
    usage: Usage,
) -> str:
    """The card of a LoRA of what is liked: it goes on the positive pass, the prompt unchanged."""
    from negalora.export.metadata import learned_from

    c = source.config
    targets = _trained_modules(c)
    lora_name = Path(file_name).stem if fmt == "kohya" else name
    objective = {"kto": "Diffusion-KTO (Li et al. 2024)", "dpo": "Diffusion-DPO (Wallace et al. 2023)"}.get(
        c.objective, "DreamBooth on the picks"
    )
    e = evidence
    return f"""# {name}

A LoRA of **what you liked** for **SDXL base 1.0**, made with negalora from your verdicts
({objective}). Unlike a `wrong` LoRA it needs no token: use it on the **positive** guidance pass,
with your prompt as it is.
{_demo_note(usage)}
| | |
|---|---|
| File | `{file_name}` ({fmt} format) |
| Learned from | {learned_from(source)} |
| Steps | {source.step} of {c.steps} (run `{source.run_id}`) |
| Rank / alpha | {c.rank} / {alpha:g} (scale {alpha / c.rank:g}) |
| Learning rate | {c.lr:g} ({c.lr_schedule}), batch {c.batch} × {c.grad_accum}, seed {c.seed} |
| Trained modules | {targets} |
| Resolution | {metadata["modelspec.resolution"]} |
| Base model | {source.base_name} (negalora model hash `{source.base_hash[:12]}`) |
| ComfyUI workflows | `{usage.workflow}` (drop on the canvas), `{usage.api_workflow}` (API) |
{_grid(grid_name)}
## How to use it: what measured best

{_liked_lead(e, usage)}

{_ways_table(e)}
Test recipe used below: `{usage.prompt}`, seed {usage.seed}, {usage.steps} steps, CFG {usage.guidance:g},
{usage.scheduler}, {usage.width}×{usage.height}, no negative prompt.

### ComfyUI

{_liked_comfyui(e, usage, fmt)}

### diffusers

{_leave_out(e)}`load_lora_weights` applies the LoRA on both passes; negalora's `positive_pass`
(the code negalora renders with) applies it on the positive pass only:

```python
{liked_snippet(usage)}
```

Without the `with` block the LoRA acts on both passes ({e.numbers(ev.BOTH_PASSES)}{
        "; worse than base" if e.worse_than_base(ev.BOTH_PASSES) else ""
    }).

### AUTOMATIC1111 / Forge

{_liked_a1111(e, usage, lora_name)}

### negalora

{_liked_negalora(e, usage, file_name)}

{_check_and_hashes(verification, file_sha256, metadata, source)}"""
