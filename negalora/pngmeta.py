"""PNG metadata as A1111 writes it (``parameters``), plus negalora's own JSON recipe.

The ``parameters`` text is the prompt, a ``Negative prompt: …`` line, then one last line that
starts with ``Steps: `` and holds ``key: value`` pairs separated by ", ". Values that contain
"," or ":" are JSON-quoted. Civitai and A1111's "PNG Info" read it that way.
"""

import io
import json
import re

from PIL import Image, PngImagePlugin

from negalora.recipe import Recipe

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "negalora"

# A1111's own pattern for the settings line.
_PARAM_RE = re.compile(r'\s*([\w ./+\-]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_LORA_TAG_RE = re.compile(r"\s*<lora:[^>]+>")


def _quote(value) -> str:
    text = str(value)
    if "," in text or ":" in text or '"' in text or "\n" in text:
        return json.dumps(text)
    return text


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text[1:-1]
    return text


def _fmt_float(x: float) -> str:
    return f"{x:g}"


def format_parameters(recipe: Recipe) -> str:
    prompt = recipe.prompt
    if recipe.lora:
        # How A1111 itself records a LoRA in the prompt.
        prompt = f"{prompt} <lora:{recipe.lora}:{_fmt_float(recipe.lora_scale)}>"
    pairs = [
        ("Steps", recipe.steps),
        ("Sampler", recipe.scheduler),
        ("CFG scale", _fmt_float(recipe.guidance)),
        ("Seed", recipe.seed),
        ("Size", f"{recipe.width}x{recipe.height}"),
        ("Model hash", recipe.model_hash[:10]),
        ("Model", recipe.model),
    ]
    if recipe.vae:
        pairs += [("VAE hash", recipe.vae_hash[:10]), ("VAE", recipe.vae)]
    if recipe.refiner:
        pairs += [
            ("Refiner", f"{recipe.refiner} [{recipe.refiner_hash[:10]}]"),
            ("Refiner switch at", _fmt_float(recipe.refiner_switch)),
        ]
    if recipe.lora:
        pairs.append(("Lora hashes", f"{recipe.lora}: {recipe.lora_hash[:12]}"))
        if recipe.lora_passes != "both":  # negalora's own: the LoRA acted on the negative pass only
            pairs.append(("Lora passes", recipe.lora_passes))
    pairs += [("RNG", recipe.noise_device.upper()), ("Version", f"negalora {recipe.version}")]
    settings = ", ".join(f"{k}: {_quote(v)}" for k, v in pairs)
    lines = [prompt]
    if recipe.negative:
        lines.append(f"Negative prompt: {recipe.negative}")
    lines.append(settings)
    return "\n".join(lines)


def parse_parameters(text: str) -> dict:
    """Split A1111 ``parameters`` text into prompt, negative and a dict of settings."""
    lines = text.strip().split("\n")
    settings_line = lines[-1] if lines and lines[-1].startswith("Steps: ") else ""
    body = lines[:-1] if settings_line else lines
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    settings = {k.strip(): _unquote(v) for k, v in _PARAM_RE.findall(settings_line)}
    return {"prompt": "\n".join(prompt_lines), "negative": "\n".join(negative_lines), "settings": settings}


def recipe_fields_from_parameters(text: str) -> dict:
    """The recipe fields that A1111 ``parameters`` text carries (hashes are truncated there)."""
    parsed = parse_parameters(text)
    s = parsed["settings"]
    prompt = parsed["prompt"]
    out: dict = {"negative": parsed["negative"]}
    tags = _LORA_TAG_RE.findall(prompt)
    if tags:
        name, _, scale = tags[-1].strip()[len("<lora:") : -1].rpartition(":")
        out["lora"], out["lora_scale"] = name, float(scale)
        prompt = _LORA_TAG_RE.sub("", prompt)
    out["prompt"] = prompt
    if "Steps" in s:
        out["steps"] = int(s["Steps"])
    if "Sampler" in s:
        out["scheduler"] = s["Sampler"]
    if "CFG scale" in s:
        out["guidance"] = float(s["CFG scale"])
    if "Seed" in s:
        out["seed"] = int(s["Seed"])
    if "Size" in s:
        w, h = s["Size"].split("x")
        out["width"], out["height"] = int(w), int(h)
    if "Model" in s:
        out["model"] = s["Model"]
    if "Model hash" in s:
        out["model_hash"] = s["Model hash"]
    if "Lora hashes" in s:
        out["lora_hash"] = s["Lora hashes"].rpartition(":")[2].strip()
    if "Refiner" in s:
        name, _, h = s["Refiner"].rpartition(" [")
        out["refiner"], out["refiner_hash"] = name, h.rstrip("]")
    if "Refiner switch at" in s:
        out["refiner_switch"] = float(s["Refiner switch at"])
    if "VAE" in s:
        out["vae"] = s["VAE"]
    if "VAE hash" in s:
        out["vae_hash"] = s["VAE hash"]
    if "RNG" in s:
        out["noise_device"] = s["RNG"].lower()
    return out


def png_bytes(image: Image.Image, recipe: Recipe) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(recipe))
    info.add_text(RECIPE_KEY, recipe.to_json())
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()


def read_recipe(image: Image.Image) -> Recipe | None:
    text = getattr(image, "text", {}).get(RECIPE_KEY) or image.info.get(RECIPE_KEY)
    return Recipe.from_json(text) if text else None
