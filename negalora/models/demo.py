"""The demo model: a tiny model of the exact SDXL architecture that works offline.

Same classes as SDXL base (two CLIP text encoders, the second with projection, a ``text_time``
UNet, an AutoencoderKL, the real CLIP tokenizer), only small, and trained: it draws the shape
world of ``negalora.demo_world`` (coloured shapes on coloured backgrounds, 32 x 32), including its
defects that no prompt mentions. The weights ship in ``resources/demo_model`` (fp16, made by
``python -m negalora.demo_world.pretrain``); the tokenizers come from ``resources/clip_tokenizer``.
``ensure_demo_folder`` assembles both into a standard diffusers folder.
"""
# diffusers annotates its constructors' tuple arguments as one-element tuples (tuple[int]) and a
# pipeline's scheduler as an enum; the calls here are the documented ones.
# pyright: reportArgumentType=false

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

from negalora.errors import NegaloraError
from negalora.models.tokenizer import PAD_CLIP_L, PAD_OPENCLIP, clip_tokenizer
from negalora.resources import DEMO_MODEL, DEMO_NAME

# Bump when the demo's weights or shape change, so old cached copies are rebuilt.
DEMO_VERSION = 3
DEMO_SIZE = 32  # native resolution in pixels
SEED = 20240
TEXT_HIDDEN_2 = 48  # the second encoder's width (the refiner reads it)
TIME_EMBED = 8


def _shipped() -> Path:
    if not (DEMO_MODEL / "model_index.json").is_file():
        raise NegaloraError(f"{DEMO_MODEL}: the demo model's weights are missing from this checkout")
    return DEMO_MODEL


def shipped_weights_hash() -> str:
    """One hash over the shipped weight files, so a copy made from older weights is rebuilt."""
    digest = hashlib.sha256()
    for path in sorted(_shipped().rglob("*.safetensors")):
        digest.update(path.relative_to(DEMO_MODEL).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build_demo_pipeline() -> StableDiffusionXLPipeline:
    """The demo pipeline in memory, in fp32, the same on every call."""
    return StableDiffusionXLPipeline.from_pretrained(
        str(_shipped()),
        tokenizer=clip_tokenizer(PAD_CLIP_L),
        tokenizer_2=clip_tokenizer(PAD_OPENCLIP),
        dtype=torch.float32,
        use_safetensors=True,
        local_files_only=True,
    )


def _stamp(folder: Path) -> Path:
    return folder / "negalora_demo.json"


def _current(folder: Path, weights: str) -> bool:
    try:
        data = json.loads(_stamp(folder).read_text())
    except (OSError, ValueError):
        return False
    return data.get("version") == DEMO_VERSION and data.get("weights") == weights


@contextmanager
def _folder_lock(folder: Path):
    """One process at a time writes the folder (the ranks of a multi-process training run all load
    the demo model at once): a second one would replace it while the first reads it."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(folder.parent / f".{folder.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_demo_folder(folder: Path) -> Path:
    """Write the demo model as a diffusers folder at ``folder`` unless a current copy is there."""
    folder = Path(folder)
    weights = shipped_weights_hash()
    if _current(folder, weights):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):
        if _current(folder, weights):  # another process wrote it while this one waited
            return folder
        return _write_demo_folder(folder, weights)


def _write_demo_folder(folder: Path, weights: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=folder.parent))
    try:
        shutil.copytree(_shipped(), tmp, dirs_exist_ok=True)
        clip_tokenizer(PAD_CLIP_L).save_pretrained(tmp / "tokenizer")
        clip_tokenizer(PAD_OPENCLIP).save_pretrained(tmp / "tokenizer_2")
        info = json.loads((tmp / "negalora_demo.json").read_text())
        info.update(name=DEMO_NAME, version=DEMO_VERSION, native_size=DEMO_SIZE, weights=weights)
        _stamp(tmp).write_text(json.dumps(info, indent=2, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_demo_refiner(base: StableDiffusionXLPipeline | None = None):
    """A tiny SDXL refiner (img2img, second text encoder only, aesthetic-score time ids) that fits
    the demo model: used to test the base → refiner handoff offline."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    base = base or build_demo_pipeline()
    torch.manual_seed(SEED + 10)
    unet = UNet2DConditionModel(
        sample_size=DEMO_SIZE // 4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
        cross_attention_dim=TEXT_HIDDEN_2,  # the refiner reads encoder 2 only
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        # 5 time ids (original size, crop top-left, aesthetic score) plus the pooled projection.
        projection_class_embeddings_input_dim=5 * TIME_EMBED + TEXT_HIDDEN_2,
    )
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(base.scheduler.config),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
