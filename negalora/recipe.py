"""A recipe: everything needed to make one image again, exactly."""

import json
from dataclasses import asdict, dataclass, fields

from negalora import __version__

RECIPE_FORMAT = 1


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
    lora_passes: str = "both"  # the guidance passes the LoRA acts on: both | negative (negalora.lora_passes)
    refiner: str = ""
    refiner_hash: str = ""
    refiner_location: str = ""
    refiner_switch: float = 0.8
    vae: str = ""  # a separate VAE ("" when the model's own)
    vae_hash: str = ""
    vae_location: str = ""
    noise_device: str = "cpu"  # the seed's generator device: CPU noise is the same on every machine
    version: str = __version__

    def to_json(self) -> str:
        return json.dumps({"format": RECIPE_FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls.from_dict(json.loads(text))
