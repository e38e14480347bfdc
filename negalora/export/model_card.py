"""The model card written beside an exported LoRA: how it was trained, what it was checked
against, and how to use it. A "wrong" LoRA is used the other way round from most LoRAs: it is
loaded, and its token goes in the *negative* prompt."""

import json

from negalora.export.source import ExportSource


def _usage(fmt: str, file_name: str, lora_name: str, token: str, te: bool) -> str:
    kohya_note = (
        ""
        if fmt == "kohya"
        else (
            "\nThis file has diffusers keys. A1111 and ComfyUI read kohya files best: export one with "
            "`negalora export RUN --format kohya`.\n"
        )
    )
    clip = "1.0 (the text encoders were trained too)" if te else "any value (only the UNet was trained)"
    return f"""## How to use it

The LoRA is loaded as usual, but `{token}` goes in the **negative prompt**, not the prompt: it
steers images away from what the training images show.
{kohya_note}
**AUTOMATIC1111 / Forge.** Copy `{file_name}` into `models/Lora`. Add `<lora:{lora_name}:1>` anywhere
in the prompt; the tag only loads the LoRA (A1111 removes it from the text, and the LoRA then
applies to the whole generation). Write `{token}` in the *Negative prompt* box.

**ComfyUI.** Copy `{file_name}` into `models/loras`. Put a **LoraLoader** node between *Load
Checkpoint* and the rest: its MODEL output goes to the KSampler, its CLIP output to both
CLIPTextEncode nodes. Set `strength_model` to 1.0 and `strength_clip` to {clip}. Type `{token}` in the
CLIPTextEncode that feeds the KSampler's **negative** input.

**diffusers.**

```python
import torch
from diffusers import StableDiffusionXLPipeline

pipe = StableDiffusionXLPipeline.from_pretrained(
    "stabilityai/stable-diffusion-xl-base-1.0", torch_dtype=torch.float16
).to("cuda")
pipe.load_lora_weights(".", weight_name="{file_name}")
image = pipe("a photo of a cat", negative_prompt="{token}", guidance_scale=7.0).images[0]
```

`pipe.set_adapters(...)` or `cross_attention_kwargs={{"scale": 0.8}}` changes the strength.

**Negative pass only (negalora's default).** A1111, ComfyUI and diffusers apply a LoRA to both
guidance passes. negalora applies it by default only where the negative prompt is drawn (the
unconditional pass): there the LoRA's `{token}` pulls the image away from the rejects without
changing how the positive prompt is drawn. On negalora's demo world this did better than both
passes, which leaked the defects into the positive pass (`docs/efficacy.md`). In negalora:
`negalora generate "..." --negative {token} --lora {file_name} --lora-passes negative`.
"""


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
) -> str:
    c = source.config
    token = c.token
    targets = "UNet attention (to_q, to_k, to_v, to_out.0)" + (" and feed-forward" if c.feed_forward else "")
    if c.train_text_encoder:
        targets += "; both text encoders' attention (q, k, v, out proj)"
    reasons = ", with reason tags" if c.captions_with_reasons else ""
    tags = json.loads(metadata.get("ss_tag_frequency", "{}")).get("rejects", {})
    if verification.get("verified"):
        check = (
            f"Before it was put in place, the file was reloaded with diffusers into the base model: "
            f"{verification['modules_loaded']} of {verification['modules_in_file']} LoRA modules loaded with the "
            f"checkpoint's weights and scale, and a {verification['size']}×{verification['size']} image "
            f"(seed {verification['seed']}, {verification['steps']} steps, negative `{verification['negative']}`) "
            f"differed from the app's render of the checkpoint by at most {verification['max_pixel_diff']}/255."
        )
    else:
        check = "The file was written without the reload check (exported with `--no-verify`)."
    grid = (
        f"\n## Comparison grid\n\n![The run's latest comparison]({grid_name})\n"
        if grid_name
        else "\n(No comparison grid yet: run a comparison in negalora and export again to include one.)\n"
    )
    return f"""# {name}

A "wrong" LoRA for **SDXL base 1.0**, made with negalora from images that were
rejected while generating. Use it with `{token}` in the negative prompt.

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
{grid}
{_usage(fmt, file_name, file_name.rsplit(".", 1)[0], token, c.train_text_encoder)}
## Check and hashes

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
