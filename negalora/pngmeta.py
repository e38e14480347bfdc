"""PNG metadata as A1111 writes it (``parameters``), plus negalora's own JSON recipe.

The ``parameters`` text is the prompt, a ``Negative prompt: …`` line, then one last line that
starts with ``Steps: `` and holds ``key: value`` pairs separated by ", ". Values that contain
"," or ":" are JSON-quoted. Civitai and A1111's "PNG Info" read it that way.
"""

import io
import json
import math
import re

from PIL import Image, PngImagePlugin

from negalora.errors import NegaloraError
from negalora.recipe import BadRecipe, Recipe

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "negalora"

# Real parameters text and recipes are a few KB; PIL lets a PNG carry 64 MB of text. Longer text is refused
# rather than parsed, so a hostile file costs no time.
MAX_TEXT_CHARS = 1_000_000

# A1111 reads the settings line with r'\s*([\w ./+\-]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', which backtracks
# quadratically (or worse) on long runs of spaces or key characters; _settings() reads the same pairs in one pass.
_KEY_RUN = re.compile(r"[\w ./+\-]+")
_QUOTED = re.compile(r'\s*+("(?:[^\\"]++|\\.)++")')  # possessive: a hostile quote run cannot backtrack
# No "<" inside: a tag without its ">" then fails at the next "<", not at the end of a megabyte of text.
_LORA_TAG_RE = re.compile(r"<lora:[^<>]+>")


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
    hashes = [f"{name}: {sha[:12]}" for name, sha in ((recipe.lora, recipe.lora_hash),
              (recipe.negative_lora, recipe.negative_lora_hash)) if name]  # fmt: skip
    if hashes:
        pairs.append(("Lora hashes", ", ".join(hashes)))
    if recipe.lora and recipe.lora_passes != "both":  # negalora's own: the passes the LoRA acted on
        pairs.append(("Lora passes", recipe.lora_passes))
    if recipe.negative_lora:  # negalora's own: a second LoRA, on the negative pass only
        pairs.append(("Negative pass lora", f"{recipe.negative_lora}:{_fmt_float(recipe.negative_lora_scale)}"))
    if recipe.init_image:  # as A1111's img2img tab writes it; the init image's hash is negalora's own
        pairs += [("Denoising strength", _fmt_float(recipe.strength)), ("Init image hash", recipe.init_image[:10])]
    if recipe.batch_size > 1:  # as A1111 writes them, only for a real batch
        pairs += [("Batch size", recipe.batch_size), ("Batch pos", recipe.batch_pos)]
    pairs += [("RNG", recipe.noise_device.upper()), ("Version", f"negalora {recipe.version}")]
    settings = ", ".join(f"{k}: {_quote(v)}" for k, v in pairs)
    lines = [prompt]
    if recipe.negative:
        lines.append(f"Negative prompt: {recipe.negative}")
    lines.append(settings)
    return "\n".join(lines)


def parse_parameters(text: str) -> dict:
    """Split A1111 ``parameters`` text into prompt, negative and a dict of settings."""
    _check_length(text, "A1111 parameters text")
    lines = text.strip().split("\n")
    settings_line = lines[-1] if lines and lines[-1].startswith("Steps: ") else ""
    body = lines[:-1] if settings_line else lines
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return {
        "prompt": "\n".join(prompt_lines),
        "negative": "\n".join(negative_lines),
        "settings": _settings(settings_line),
    }


def _settings(line: str) -> dict[str, str]:
    """``key: value`` pairs as A1111's pattern finds them: the key is the run of key characters before a
    colon, the value a JSON-quoted string followed by "," or the end, else everything up to the next ","."""
    out: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        colon = line.find(":", i)
        if colon < 0:
            break
        key = _KEY_RUN.match(line[i:colon][::-1])  # the run that ends at the colon, read backwards
        if key is None:
            i = colon + 1
            continue
        quoted = _QUOTED.match(line, colon + 1)
        if quoted and (quoted.end() == n or line[quoted.end()] == ","):
            value, i = quoted.group(1), quoted.end() + 1
        else:
            comma = line.find(",", colon + 1)
            end = n if comma < 0 else comma
            value, i = line[colon + 1 : end], end + 1
        out[key.group()[::-1].strip()] = _unquote(value)
    return out


def recipe_fields_from_parameters(text: str) -> dict:
    """The recipe fields that A1111 ``parameters`` text carries (hashes are truncated there); a value that
    is not what A1111 writes raises NegaloraError."""
    parsed = parse_parameters(text)
    s = parsed["settings"]
    prompt = parsed["prompt"]
    out: dict = {"negative": parsed["negative"]}
    tags = list(_LORA_TAG_RE.finditer(prompt))
    if tags:
        name, colon, scale = tags[-1].group()[len("<lora:") : -1].rpartition(":")
        out["lora"], out["lora_scale"] = (name, _number("LoRA weight", scale, float)) if colon else (scale, 1.0)
        prompt = _without_tags(prompt, tags)
    out["prompt"] = prompt
    if "Steps" in s:
        out["steps"] = _number("Steps", s["Steps"], int)
    if "Sampler" in s:
        out["scheduler"] = s["Sampler"]
    if "CFG scale" in s:
        out["guidance"] = _number("CFG scale", s["CFG scale"], float)
    if "Seed" in s:
        out["seed"] = _number("Seed", s["Seed"], int)
    if "Size" in s:
        w, x, h = s["Size"].partition("x")
        if not x:
            raise NegaloraError(f"A1111 parameters: Size {_shown(s['Size'])} is not WxH")
        out["width"], out["height"] = _number("Size", w, int), _number("Size", h, int)
    if "Model" in s:
        out["model"] = s["Model"]
    if "Model hash" in s:
        out["model_hash"] = s["Model hash"]
    if "Lora hashes" in s:
        named = dict(part.rpartition(":")[::2] for part in s["Lora hashes"].split(","))
        named = {k.strip(): v.strip() for k, v in named.items()}
        if "lora" in out and out["lora"] in named:
            out["lora_hash"] = named[out["lora"]]
        elif named:
            out["lora_hash"] = next(iter(named.values()))
    if "Negative pass lora" in s:
        name, _, scale = s["Negative pass lora"].rpartition(":")
        out["negative_lora"], out["negative_lora_scale"] = name, _number("Negative pass lora", scale, float)
        if "Lora hashes" in s and name in named:
            out["negative_lora_hash"] = named[name]
    if "Refiner" in s:
        name, _, h = s["Refiner"].rpartition(" [")
        out["refiner"], out["refiner_hash"] = name, h.rstrip("]")
    if "Refiner switch at" in s:
        out["refiner_switch"] = _number("Refiner switch at", s["Refiner switch at"], float)
    if "VAE" in s:
        out["vae"] = s["VAE"]
    if "VAE hash" in s:
        out["vae_hash"] = s["VAE hash"]
    if "RNG" in s:
        out["noise_device"] = s["RNG"].lower()
    if "Denoising strength" in s and "Init image hash" in s:  # txt2img with hires fix writes the strength alone
        out["strength"] = _number("Denoising strength", s["Denoising strength"], float)
        out["init_image"] = s["Init image hash"]
    return out


def _without_tags(prompt: str, tags: list[re.Match]) -> str:
    """The prompt with each LoRA tag and the whitespace before it removed (as A1111's r"\\s*<lora:...>")."""
    pieces, last = [], 0
    for tag in tags:
        pieces.append(prompt[last : tag.start()].rstrip())
        last = tag.end()
    return "".join(pieces) + prompt[last:]


def _number(key: str, text: str, kind: type):
    try:
        value = kind(text.strip())
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        raise NegaloraError(f"A1111 parameters: {key} {_shown(text)} is not a number")
    return value


def _shown(text: str) -> str:
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


def _check_length(text: str, what: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise NegaloraError(f"{what} of {len(text):,} characters (over {MAX_TEXT_CHARS:,}); not parsed")


def png_bytes(image: Image.Image, recipe: Recipe) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(recipe))
    info.add_text(RECIPE_KEY, recipe.to_json())
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()


def read_recipe(image: Image.Image) -> Recipe | None:
    """negalora's recipe from the image's ``negalora`` text chunk; None when there is none. A damaged
    chunk (or damaged text chunks around it) raises NegaloraError naming the file: callers that only
    want a recipe when a good one is there catch it."""
    name = getattr(image, "filename", "") or "image"
    try:
        text = getattr(image, "text", {}).get(RECIPE_KEY) or image.info.get(RECIPE_KEY)
    except Exception as exc:  # noqa: BLE001 - .text decodes the rest of the file; PIL raises many kinds there
        raise NegaloraError(f"{name}: unreadable PNG text chunks ({str(exc)[:200]})") from exc
    if not text:
        return None
    if not isinstance(text, str):
        raise NegaloraError(f"{name}: damaged negalora recipe (not text)")
    try:
        _check_length(text, "recipe")
        return Recipe.from_json(text)
    except BadRecipe as exc:
        raise NegaloraError(f"{name}: damaged negalora recipe ({exc})") from exc
    except NegaloraError as exc:
        raise NegaloraError(f"{name}: {exc}") from exc
