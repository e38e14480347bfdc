import re

from PIL import Image

from negalora.pngmeta import format_parameters, parse_parameters, png_bytes, read_recipe, recipe_fields_from_parameters
from negalora.recipe import Recipe


def _recipe(**kw):
    base = dict(
        prompt="a (red)++ circle, on a blue background",
        negative="wrong, blurry",
        seed=1234,
        steps=30,
        guidance=13.0,
        width=1024,
        height=768,
        scheduler="DPM++ 2M Karras",
        model="my: model, v2",
        model_hash="0123456789abcdef" * 4,
    )
    base.update(kw)
    return Recipe(**base)


def test_parameters_follow_the_a1111_rules():
    text = format_parameters(_recipe())
    last = text.splitlines()[-1]
    assert last.startswith("Steps: ")
    pairs = re.findall(r"([\w ]+): ", last)
    assert len(pairs) >= 3
    assert text.splitlines()[1] == "Negative prompt: wrong, blurry"
    assert "Model hash: 0123456789," in last
    assert 'Model: "my: model, v2"' in last  # values with "," or ":" are JSON-quoted


def test_parameters_parse_back_to_the_same_recipe():
    recipe = _recipe(lora="wrong", lora_hash="fedcba9876543210" * 4, lora_scale=0.75, lora_path="/x/wrong.safetensors")
    fields = recipe_fields_from_parameters(format_parameters(recipe))
    for key in (
        "prompt",
        "negative",
        "seed",
        "steps",
        "guidance",
        "width",
        "height",
        "scheduler",
        "model",
        "lora",
        "lora_scale",
    ):
        assert fields[key] == getattr(recipe, key), key
    assert recipe.model_hash.startswith(fields["model_hash"]) and len(fields["model_hash"]) == 10
    assert recipe.lora_hash.startswith(fields["lora_hash"]) and len(fields["lora_hash"]) == 12
    assert fields["noise_device"] == "cpu"


def test_multiline_prompt_and_no_negative():
    recipe = _recipe(prompt="line one\nline two", negative="")
    parsed = parse_parameters(format_parameters(recipe))
    assert parsed["prompt"] == "line one\nline two"
    assert parsed["negative"] == ""
    assert parsed["settings"]["Seed"] == "1234"


def test_png_carries_both_chunks(tmp_path):
    recipe = _recipe()
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(Image.new("RGB", (8, 8), "red"), recipe))
    with Image.open(path) as im:
        assert im.text["parameters"] == format_parameters(recipe)
        assert read_recipe(im) == recipe
        assert im.getpixel((3, 3)) == (255, 0, 0)
