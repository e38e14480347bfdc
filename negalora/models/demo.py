"""The demo model: a tiny model of the exact SDXL architecture that works offline.

Same classes as SDXL base (two CLIP text encoders, the second with projection, a ``text_time``
UNet, an AutoencoderKL, the real CLIP tokenizer), only small. Built deterministically from a fixed
seed and saved as a standard diffusers folder that ``StableDiffusionXLPipeline.from_pretrained``
loads.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from negalora.models.tokenizer import PAD_CLIP_L, PAD_OPENCLIP, clip_tokenizer

DEMO_NAME = "demo"
# Bump when the demo's weights or shape change, so old cached copies are rebuilt.
DEMO_VERSION = 2
DEMO_SIZE = 64  # native resolution in pixels
DEMO_STEPS = 12
DEMO_GUIDANCE = 7.0
SEED = 20240

TEXT_HIDDEN = 32  # encoder 1 (CLIP-L's role)
# Encoder 2 (OpenCLIP bigG's role) is wider, as in SDXL: diffusers' single-file loader tells the two
# encoders apart by width, and equal widths would load CLIP-L's weights into both.
TEXT_HIDDEN_2 = 48
TIME_EMBED = 8
VOCAB = 49408


def _text_config(hidden_act: str, hidden: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=3,  # SDXL reads the penultimate layer
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def build_demo_pipeline() -> StableDiffusionXLPipeline:
    """Build the demo pipeline in memory, bit for bit the same on every call."""
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=DEMO_SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
        cross_attention_dim=TEXT_HIDDEN + TEXT_HIDDEN_2,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        # 6 time ids (original size, crop top-left, target size) plus the pooled projection.
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_HIDDEN_2,
    )
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=DEMO_SIZE,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(_text_config("quick_gelu", TEXT_HIDDEN))
    torch.manual_seed(SEED + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config("gelu", TEXT_HIDDEN_2))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(PAD_CLIP_L),
        tokenizer_2=clip_tokenizer(PAD_OPENCLIP),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def _stamp(folder: Path) -> Path:
    return folder / "negalora_demo.json"


def ensure_demo_folder(folder: Path) -> Path:
    """Write the demo model as a diffusers folder at ``folder`` unless a current copy is there."""
    folder = Path(folder)
    stamp = _stamp(folder)
    if stamp.exists():
        try:
            if json.loads(stamp.read_text()).get("version") == DEMO_VERSION:
                return folder
        except (OSError, ValueError):
            pass
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=folder.parent))
    try:
        build_demo_pipeline().save_pretrained(tmp, safe_serialization=True)
        _stamp(tmp).write_text(json.dumps({"name": DEMO_NAME, "version": DEMO_VERSION, "native_size": DEMO_SIZE}))
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
