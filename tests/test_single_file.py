"""Original single-file SDXL checkpoints (SGM / A1111 layout) and the shipped SDXL config folders."""

import json
import socket

import huggingface_hub.constants
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    infer_diffusers_model_type,
)
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from negalora.models.demo import DEMO_SIZE, build_demo_pipeline, ensure_demo_folder
from negalora.models.tokenizer import PAD_CLIP_L, PAD_OPENCLIP, clip_tokenizer
from negalora.resources import SDXL_BASE_CONFIG, SDXL_REFINER_CONFIG

try:  # tests/ as a package or as a plain directory on sys.path
    from tests.helpers_sdxl_single_file import (
        OPEN_CLIP_PREFIX,
        convert_clip_l_to_original,
        convert_open_clip_to_original,
        convert_unet_to_original,
        convert_vae_to_original,
        write_original_sdxl_checkpoint,
    )
except ImportError:
    from helpers_sdxl_single_file import (
        OPEN_CLIP_PREFIX,
        convert_clip_l_to_original,
        convert_open_clip_to_original,
        convert_unet_to_original,
        convert_vae_to_original,
        write_original_sdxl_checkpoint,
    )

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


class _NoNetwork(socket.socket):
    def connect(self, *args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")


def _offline(mp: pytest.MonkeyPatch) -> None:
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import time
    mp.setattr(socket, "socket", _NoNetwork)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp("single_file")
    pipe = build_demo_pipeline()
    checkpoint = write_original_sdxl_checkpoint(pipe, root / "tiny_sdxl.safetensors")
    config = ensure_demo_folder(root / "demo")
    return pipe, checkpoint, config


def _load(checkpoint, config, **components):
    return StableDiffusionXLPipeline.from_single_file(
        str(checkpoint),
        config=str(config),
        tokenizer=clip_tokenizer(PAD_CLIP_L),
        tokenizer_2=clip_tokenizer(PAD_OPENCLIP),
        local_files_only=True,
        **components,
    )


@pytest.fixture(scope="module")
def loaded(original, tmp_path_factory):
    """The tiny checkpoint through negalora's own loader, with the demo folder standing in for the
    shipped SDXL config folder (whose shapes are full size)."""
    from negalora.device import choose_placement
    from negalora.home import Home
    from negalora.models import loader

    pipe, checkpoint, config = original
    with pytest.MonkeyPatch.context() as mp:
        _offline(mp)
        mp.setattr(loader, "SDXL_BASE_CONFIG", config)
        model = loader.load_model(str(checkpoint), Home(tmp_path_factory.mktemp("home")), choose_placement("cpu"))
    assert model.source == "file" and model.name == "tiny_sdxl"
    return model.pipe


def test_checkpoint_uses_original_keys(original):
    _, checkpoint, _ = original
    with safe_open(str(checkpoint), "pt") as f:
        keys = set(f.keys())
    assert f"{OPEN_CLIP_PREFIX}transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    _assert_original_layout(keys)


def _assert_original_layout(keys):
    prefixes = (
        "model.diffusion_model.",
        "first_stage_model.",
        "conditioner.embedders.0.transformer.",
        OPEN_CLIP_PREFIX,
    )
    assert all(k.startswith(prefixes) for k in keys)
    diffusers_words = (
        "down_blocks",
        "up_blocks",
        "mid_block",
        "resnets",
        "conv_shortcut",
        "time_embedding",
        "add_embedding",
        "q_proj",
        "layer_norm1",
        "conv_norm_out",
        "text_model",
    )
    vae_words = ("to_q", "to_out", "group_norm")  # (the UNet's transformer blocks do use to_q / to_out.0)
    for k in keys:
        if k.startswith("conditioner.embedders.0."):
            continue  # CLIP-L keeps the Hugging Face layout in the original checkpoints
        assert not any(w in k for w in diffusers_words), k
        if k.startswith("first_stage_model."):
            assert not any(w in k for w in vae_words), k


def test_from_single_file_round_trip(original, loaded):
    pipe, _, _ = original
    for name in COMPONENTS:
        want = getattr(pipe, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert set(got) == set(want), name
        for key, value in want.items():
            assert not got[key].is_meta, f"{name}.{key} was never loaded"
            assert torch.equal(got[key], value), f"{name}.{key}"


def test_generation_identical(original, loaded):
    pipe, _, _ = original

    def run(p):
        p.set_progress_bar_config(disable=True)
        return p(
            "a red cube",
            negative_prompt="blurry",
            num_inference_steps=2,
            height=DEMO_SIZE,
            width=DEMO_SIZE,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    # One thread: tiny tensors, and OpenMP spinning makes 2 threads far slower on a busy 2-core box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (run(pipe) == run(loaded)).all()
    finally:
        torch.set_num_threads(threads)


# --- Task 1: the shipped SDXL config folders -----------------------------------------------------

SDXL_COUNTS = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}
REFINER_COUNTS = {
    "unet": 2_259_526_660,
    "vae": 83_653_863,
    "text_encoder_2": 694_659_840,
}


def _meta_models(root, names):
    models = {}
    with torch.device("meta"):
        for name in names:
            if name == "unet":
                models[name] = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder=name))
            elif name == "vae":
                models[name] = AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder=name))
            else:
                cls = CLIPTextModel if name == "text_encoder" else CLIPTextModelWithProjection
                models[name] = cls(CLIPTextConfig.from_pretrained(root, subfolder=name))
    return models


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "root, counts, pipeline_class",
    [
        (SDXL_BASE_CONFIG, SDXL_COUNTS, "StableDiffusionXLPipeline"),
        (SDXL_REFINER_CONFIG, REFINER_COUNTS, "StableDiffusionXLImg2ImgPipeline"),
    ],
    ids=["base", "refiner"],
)
def test_shipped_sdxl_configs(root, counts, pipeline_class):
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == pipeline_class
    expected_components = {k for k, v in index.items() if isinstance(v, list) and v[0] is not None}
    assert expected_components == set(counts) | {"scheduler", "tokenizer_2"} | (
        {"tokenizer"} if "text_encoder" in counts else set()
    )
    assert json.loads((root / "tokenizer_2" / "tokenizer_config.json").read_text())["pad_token"] == "!"
    scheduler = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "EulerDiscreteScheduler"

    models = _meta_models(root, counts)
    assert {name: _count(m) for name, m in models.items()} == counts

    # The original-layout converter handles the full-size architectures too, and diffusers maps
    # its output back to exactly the same keys and shapes.
    unet, vae, te2 = models["unet"], models["vae"], models["text_encoder_2"]
    original = {}
    parts = [
        (
            unet,
            convert_unet_to_original(unet.state_dict(), unet.config),
            lambda sd: convert_ldm_unet_checkpoint(sd, dict(unet.config)),
        ),
        (
            vae,
            convert_vae_to_original(vae.state_dict(), vae.config),
            lambda sd: convert_ldm_vae_checkpoint(sd, dict(vae.config)),
        ),
        (
            te2,
            convert_open_clip_to_original(te2.state_dict()),
            lambda sd: convert_open_clip_checkpoint(te2, sd, prefix=OPEN_CLIP_PREFIX),
        ),
    ]
    for model, converted, back in parts:
        original.update(converted)
        assert {k: v.shape for k, v in back(converted).items()} == {k: v.shape for k, v in model.state_dict().items()}
    _assert_original_layout(original)

    if pipeline_class == "StableDiffusionXLPipeline":
        original.update(convert_clip_l_to_original(models["text_encoder"].state_dict()))
        # Keys and shapes as in sd_xl_base_1.0.safetensors.
        known = {
            "model.diffusion_model.input_blocks.6.0.op.weight": (640, 640, 3, 3),
            "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
            "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
            "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
            "model.diffusion_model.output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
            "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
            "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
            "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
            "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
            "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
            "conditioner.embedders.1.model.text_projection": (1280, 1280),
        }
        assert {k: tuple(original[k].shape) for k in known} == known
        # Without a config, diffusers detects the model from these keys.
        assert infer_diffusers_model_type(original) == "xl_base"


def test_shipped_configs_drive_from_single_file(original):
    """model_index.json + scheduler config of the shipped folders work as ``config=`` (weights passed in)."""
    pipe, checkpoint, _ = original
    from diffusers import StableDiffusionXLImg2ImgPipeline

    with pytest.MonkeyPatch.context() as mp:
        _offline(mp)
        base = StableDiffusionXLPipeline.from_single_file(
            str(checkpoint),
            config=str(SDXL_BASE_CONFIG),
            local_files_only=True,
            **{name: getattr(pipe, name) for name in (*COMPONENTS, "tokenizer", "tokenizer_2")},
        )
        refiner = StableDiffusionXLImg2ImgPipeline.from_single_file(
            str(checkpoint),
            config=str(SDXL_REFINER_CONFIG),
            local_files_only=True,
            **{name: getattr(pipe, name) for name in ("unet", "vae", "text_encoder_2", "tokenizer_2")},
        )
    assert base.config.force_zeros_for_empty_prompt is True
    assert refiner.config.force_zeros_for_empty_prompt is False
    assert refiner.config.requires_aesthetics_score is True
    assert refiner.text_encoder is None and refiner.tokenizer is None
    for p in (base, refiner):
        config = p.scheduler.config
        assert type(p.scheduler).__name__ == "EulerDiscreteScheduler"
        assert (config.beta_schedule, config.beta_start, config.beta_end) == ("scaled_linear", 0.00085, 0.012)
        assert (config.steps_offset, config.timestep_spacing) == (1, "leading")
