"""The header metadata of an exported LoRA (every value a string, as safetensors requires): kohya's
``ss_*`` keys, which A1111 and Civitai read, the Stability ModelSpec ``modelspec.*`` keys, and
negalora's own. What each hash covers:

- ``sshs_model_hash``: sha256 of the tensor data after the header. It depends on the tensors only,
  so it is computed before the file is written; A1111 shows its first 12 characters as the LoRA hash.
- ``modelspec.hash_sha256``: the same hash with ModelSpec's ``0x`` prefix.
- ``sshs_legacy_hash``: kohya's legacy hash: the first 8 hex digits of the sha256 of bytes
  0x100000–0x10FFFF of the file kohya would write with only the ``ss_*`` keys in its header
  (computed exactly that way; for a file under 1 MiB it is the hash of nothing).
- ``negalora.checkpoint_sha256``: sha256 of the whole checkpoint file the export was made from.
The sha256 of the whole exported file cannot be in its own header; the store and ``--json`` report it.
"""

import base64
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from negalora.export.source import ExportSource
from negalora.export.writer import serialize, tensor_data
from negalora.version import __version__

BASE_MODEL_VERSION = "sdxl_base_v1-0"
ARCHITECTURE = "stable-diffusion-xl-v1-base/lora"  # as kohya writes it for SDXL LoRAs
IMPLEMENTATION = {
    "kohya": "https://github.com/Stability-AI/generative-models",  # the ecosystem's SDXL value (kohya, A1111)
    "diffusers": "diffusers",  # the keys are diffusers' own
}
THUMB_SIDE = 256  # ModelSpec recommends a 256x256 thumbnail


@dataclass(frozen=True)
class DataHashes:
    model: str  # sshs_model_hash
    legacy: str  # sshs_legacy_hash


def data_hashes(tensors: dict, ss_metadata: dict[str, str]) -> DataHashes:
    """kohya's two hashes, computed as kohya does: on the file it would write with only ss_* keys."""
    blob = serialize(tensors, {k: v for k, v in ss_metadata.items() if k.startswith("ss_")})
    model = hashlib.sha256(tensor_data(blob)).hexdigest()
    legacy = hashlib.sha256(blob[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return DataHashes(model, legacy)


def thumbnail_data_url(image: Path | None) -> str | None:
    """A small JPEG of the comparison grid as a data URL, or None when there is no grid."""
    if image is None or not Path(image).is_file():
        return None
    from PIL import Image

    with Image.open(image) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def resolution(source: ExportSource) -> int:
    if source.config.resolution:
        return source.config.resolution
    from negalora.models.demo import DEMO_SIZE

    return DEMO_SIZE if source.base_location == "demo" else 1024  # the trainer used the model's native size


def tag_frequency(source: ExportSource) -> dict:
    """kohya's ss_tag_frequency: {dataset: {tag: count}} from the training captions."""
    counts = Counter(t.strip() for c in source.captions for t in c.split(",") if t.strip())
    return {dataset_name(source): dict(sorted(counts.items()))}


def dataset_name(source: ExportSource) -> str:
    c = source.config
    if c.objective == "kto":
        return "picks and rejects"
    if c.objective == "dpo":
        return "pairs"
    return "picks" if c.source == "picks" else "rejects"


def learned_from(source: ExportSource) -> str:
    """What a LoRA learned from, in a phrase."""
    c = source.config
    if c.objective == "kto":
        return (
            f"KTO (beta {c.preference_beta:g}) on {source.picks} picked images as desirable and {source.rejects} "
            "rejected ones as undesirable, each with its own prompt"
        )
    if c.objective == "dpo":
        return f"DPO (beta {c.preference_beta:g}) on {source.pairs} pairs of one prompt, the preferred image and not"
    what = "picked" if c.source == "picks" else "rejected"
    return f"DreamBooth on {source.images} {what} images as '{c.token}'"


def usage_hint(token: str) -> str:
    return f"add `{token}` to the negative prompt"


def build_metadata(
    source: ExportSource,
    fmt: str,
    name: str,
    tensors: dict,
    alpha: float,
    checkpoint_header: dict[str, str],
    thumbnail: str | None,
) -> dict[str, str]:
    config = source.config
    size = resolution(source)
    ss = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": f"{alpha:g}",
        "ss_network_train_unet_only": str(not config.train_text_encoder),
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_sd_model_name": source.base_name,
        "ss_output_name": name,
        "ss_num_train_images": str(source.images),
        "ss_resolution": f"({size}, {size})",
        "ss_seed": str(config.seed),
        "ss_learning_rate": f"{config.lr:g}",
        "ss_lr_scheduler": config.lr_schedule,
        "ss_max_train_steps": str(config.steps),
        "ss_steps": str(source.step),
        "ss_tag_frequency": json.dumps(tag_frequency(source)),
        "ss_training_comment": (
            f"negalora LoRA of what is liked: {learned_from(source)}; use it on the positive guidance pass, "
            "with the prompt unchanged"
            if source.liked
            else f"negalora 'wrong' LoRA: trained on {source.images} rejected images as '{config.token}'; "
            f"use it with '{config.token}' in the negative prompt"
        ),
    }
    hashes = data_hashes(tensors, ss)
    meta = {
        **ss,
        "sshs_model_hash": hashes.model,
        "sshs_legacy_hash": hashes.legacy,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ARCHITECTURE,
        "modelspec.implementation": IMPLEMENTATION[fmt],
        "modelspec.title": name,
        "modelspec.description": (
            f"A LoRA of what is liked, made with negalora: {learned_from(source)} (rank {config.rank}, "
            f"alpha {alpha:g}, step {source.step}). Use it on the positive guidance pass with the prompt unchanged."
            if source.liked
            else f"A 'wrong' LoRA made with negalora from {source.images} rejected images "
            f"(rank {config.rank}, alpha {alpha:g}, step {source.step}). Put '{config.token}' in the negative "
            "prompt to steer images away from what was rejected."
        ),
        **(
            {"modelspec.usage_hint": "on the positive guidance pass only, the prompt unchanged"}
            if source.liked
            else {"modelspec.trigger_phrase": config.token, "modelspec.usage_hint": usage_hint(config.token)}
        ),
        "modelspec.hash_sha256": "0x" + hashes.model,
        "modelspec.date": source.created,
        "modelspec.resolution": f"{size}x{size}",
        "negalora.version": __version__,
        "negalora.run": source.run_id,
        "negalora.step": str(source.step),
        "negalora.base_model": source.base_name,
        "negalora.base_model_hash": source.base_hash,
        "negalora.checkpoint_sha256": source.sha256,
        "negalora.format": fmt,
        "negalora.objective": config.objective,
        "negalora.learned_from": dataset_name(source),
    }
    if thumbnail:
        meta["modelspec.thumbnail"] = thumbnail
    if fmt == "diffusers" and checkpoint_header.get("lora_adapter_metadata"):
        meta["lora_adapter_metadata"] = checkpoint_header["lora_adapter_metadata"]  # diffusers reads alpha here
    if fmt == "diffusers":
        meta["format"] = "pt"
    return meta
