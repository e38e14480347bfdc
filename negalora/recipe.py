"""A recipe: everything needed to make one image again, exactly."""

import json
import typing
from dataclasses import MISSING, asdict, dataclass, fields

from negalora.api import MAX_BATCH, json_value
from negalora.errors import NegaloraError
from negalora.version import __version__

RECIPE_FORMAT = 1


class BadRecipe(NegaloraError):
    """A recipe that is not well-formed; the message is the reason (the caller names where it came from)."""


@dataclass(frozen=True)
class Recipe:
    prompt: str
    negative: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    scheduler: str
    model: str  # display name
    model_hash: str  # full sha256 hex
    model_location: str = ""  # "demo", a folder, a file or a hub id
    lora: str = ""  # display name of the LoRA ("" when none)
    lora_path: str = ""
    lora_hash: str = ""  # sha256 of the tensor data (A1111's LoRA hash), full hex
    lora_scale: float = 1.0
    lora_passes: str = "both"  # the guidance passes the LoRA acts on: both | negative | positive
    negative_lora: str = ""  # a second LoRA, on the negative pass only ("" when none)
    negative_lora_path: str = ""
    negative_lora_hash: str = ""
    negative_lora_scale: float = 1.0
    refiner: str = ""
    refiner_hash: str = ""
    refiner_location: str = ""
    refiner_switch: float = 0.8
    vae: str = ""  # a separate VAE ("" when the model's own)
    vae_hash: str = ""
    vae_location: str = ""
    noise_device: str = "cpu"  # the seed's generator device: CPU noise is the same on every machine
    batch_size: int = 1  # images rendered in the same pipeline call (A1111's "Batch size")
    batch_pos: int = 0  # this image's place in it (A1111's "Batch pos")
    init_image: str = ""  # img2img: sha256 of the init image's file as stored ("" from noise)
    strength: float = 0.0  # img2img: A1111's "Denoising strength" (0 from noise)
    version: str = __version__

    def to_json(self) -> str:
        return json.dumps({"format": RECIPE_FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """A recipe from its JSON fields (unknown ones are ignored); wrong types raise BadRecipe."""
        if not isinstance(data, dict):
            raise BadRecipe(f"a recipe is a JSON object, not a {type(data).__name__}")
        values = {}
        for f in fields(cls):
            if f.name in data:
                values[f.name] = json_value(
                    typing.cast(type, f.type), data[f.name], f"the recipe's {f.name}", BadRecipe
                )
            elif f.default is MISSING:
                raise BadRecipe(f"the recipe has no {f.name}")
        if values.get("init_image") and not (0 < values.get("strength", 0.0) <= 1):
            raise BadRecipe(f"the recipe's strength {values.get('strength', 0.0)} is not an img2img strength (0 to 1)")
        size, pos = values.get("batch_size", 1), values.get("batch_pos", 0)
        if not (1 <= size <= MAX_BATCH and 0 <= pos < size):
            raise BadRecipe(f"the recipe's batch size {size} and place {pos} are not a batch (1 to {MAX_BATCH})")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            data = json.loads(text)
        except RecursionError:
            raise BadRecipe("the recipe's JSON is nested too deeply") from None
        except ValueError as exc:
            raise BadRecipe(f"the recipe is not JSON ({str(exc)[:100]})") from None
        return cls.from_dict(data)
