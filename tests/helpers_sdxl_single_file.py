"""Test fixture: write a diffusers SDXL pipeline as an *original* single-file checkpoint.

The key layout is the one of ``sd_xl_base_1.0.safetensors`` (Stability's SGM code base, which A1111,
ComfyUI and civitai checkpoints share):

- ``model.diffusion_model.*``: the UNet (``input_blocks`` / ``middle_block`` / ``output_blocks`` /
  ``time_embed`` / ``label_emb`` / ``out``),
- ``first_stage_model.*``: the VAE (``encoder.down.N.block.M`` ..., attention as 1x1 convolutions),
- ``conditioner.embedders.0.transformer.text_model.*``: CLIP ViT-L, in the Hugging Face layout,
- ``conditioner.embedders.1.model.*``: OpenCLIP ViT-bigG (``transformer.resblocks.N.attn.in_proj_weight``,
  ``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection`` stored transposed).

It is the inverse of ``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``,
``convert_ldm_clip_checkpoint`` and ``convert_open_clip_checkpoint`` in
``diffusers/loaders/single_file_utils.py``. Block indices come from the models' configs, so any
SDXL-shaped architecture works (the tiny demo model as well as the real one).
"""

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_RESNET_UNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_RESNET_VAE = {"conv_shortcut": "nin_shortcut"}  # norm1 / conv1 / norm2 / conv2 keep their names
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _rename_module(module: str, mapping: dict) -> str:
    """Rename the trailing component(s) of a dotted module path (``0.conv_shortcut`` -> ``0.nin_shortcut``)."""
    for old, new in mapping.items():
        if module == old:
            return new
        if module.endswith("." + old):
            return module[: -len(old)] + new
    return module


def convert_unet_to_original(state_dict: dict, config) -> dict:
    """Diffusers ``UNet2DConditionModel`` state dict -> SGM ``model.diffusion_model.*`` layout."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("per-block layers_per_block has no original-layout equivalent")
    n_levels = len(config["block_out_channels"])
    out = {}
    unused = dict(state_dict)

    def take(key):
        return unused.pop(key)

    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for key in list(unused):
        module, param = key.rsplit(".", 1)
        if module in fixed:
            out[f"{fixed[module]}.{param}"] = take(key)

    def move(src_prefix: str, dst_prefix: str, resnet: bool):
        for key in [k for k in unused if k.startswith(src_prefix + ".")]:
            inner = key[len(src_prefix) + 1 :]
            if resnet:
                module, param = inner.rsplit(".", 1)
                inner = f"{_rename_module(module, _RESNET_UNET)}.{param}"
            out[f"{dst_prefix}.{inner}"] = take(key)

    # Down path: input_blocks.0 is conv_in; then (layers + 1) slots per level, the last slot of a
    # level holding its downsampler (none after the deepest level).
    for level in range(n_levels):
        for layer in range(layers):
            idx = 1 + level * (layers + 1) + layer
            move(f"down_blocks.{level}.resnets.{layer}", f"input_blocks.{idx}.0", resnet=True)
            move(f"down_blocks.{level}.attentions.{layer}", f"input_blocks.{idx}.1", resnet=False)
        if level < n_levels - 1:
            idx = 1 + level * (layers + 1) + layers
            move(f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{idx}.0.op", resnet=False)

    move("mid_block.resnets.0", "middle_block.0", resnet=True)
    move("mid_block.attentions.0", "middle_block.1", resnet=False)
    move("mid_block.resnets.1", "middle_block.2", resnet=True)

    # Up path: (layers + 1) resnets per level; the upsampler sits after the attention when there is one.
    for level in range(n_levels):
        has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in unused)
        for layer in range(layers + 1):
            idx = level * (layers + 1) + layer
            move(f"up_blocks.{level}.resnets.{layer}", f"output_blocks.{idx}.0", resnet=True)
            move(f"up_blocks.{level}.attentions.{layer}", f"output_blocks.{idx}.1", resnet=False)
        idx = level * (layers + 1) + layers
        slot = 2 if has_attention else 1
        move(f"up_blocks.{level}.upsamplers.0.conv", f"output_blocks.{idx}.{slot}.conv", resnet=False)

    if unused:
        raise ValueError(f"UNet keys with no original-layout equivalent: {sorted(unused)[:10]}")
    return {UNET_PREFIX + k: v for k, v in out.items()}


def convert_vae_to_original(state_dict: dict, config) -> dict:
    """Diffusers ``AutoencoderKL`` state dict -> LDM ``first_stage_model.*`` layout."""
    n_levels = len(config["block_out_channels"])
    out = {}
    unused = dict(state_dict)

    for key in list(unused):
        module, param = key.rsplit(".", 1)
        if module in ("quant_conv", "post_quant_conv"):
            out[key] = unused.pop(key)
        elif module in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out"):
            out[key] = unused.pop(key)
        elif module in ("encoder.conv_norm_out", "decoder.conv_norm_out"):
            out[module.replace("conv_norm_out", "norm_out") + "." + param] = unused.pop(key)

    def move(src_prefix: str, dst_prefix: str, mapping: dict, conv_attention: bool = False):
        for key in [k for k in unused if k.startswith(src_prefix + ".")]:
            module, _, param = key[len(src_prefix) + 1 :].rpartition(".")
            value = unused.pop(key)
            if conv_attention and param == "weight" and value.ndim == 2:
                value = value[:, :, None, None]  # linear -> 1x1 convolution, as LDM stores them
            module = _rename_module(module, mapping)
            out[f"{dst_prefix}.{module}.{param}" if module else f"{dst_prefix}.{param}"] = value

    for part in ("encoder", "decoder"):
        move(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", _RESNET_VAE)
        move(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", _RESNET_VAE)
        move(f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", _VAE_ATTENTION, conv_attention=True)

    for level in range(n_levels):
        move(f"encoder.down_blocks.{level}.resnets", f"encoder.down.{level}.block", _RESNET_VAE)
        move(f"encoder.down_blocks.{level}.downsamplers.0.conv", f"encoder.down.{level}.downsample.conv", {})
        # The decoder's up blocks are numbered from the deepest level in LDM.
        ldm_level = n_levels - 1 - level
        move(f"decoder.up_blocks.{level}.resnets", f"decoder.up.{ldm_level}.block", _RESNET_VAE)
        move(f"decoder.up_blocks.{level}.upsamplers.0.conv", f"decoder.up.{ldm_level}.upsample.conv", {})

    if unused:
        raise ValueError(f"VAE keys with no original-layout equivalent: {sorted(unused)[:10]}")
    return {VAE_PREFIX + k: v for k, v in out.items()}


def convert_clip_l_to_original(state_dict: dict) -> dict:
    """``CLIPTextModel`` -> ``conditioner.embedders.0.transformer.text_model.*`` (HF layout kept).

    transformers >= 5.6 flattened ``CLIPTextModel`` (no ``text_model.`` in its keys); the original
    checkpoints always have it.
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith("text_model."):
            key = "text_model." + key
        out[CLIP_L_PREFIX + key] = value
    return out


def convert_open_clip_to_original(state_dict: dict) -> dict:
    """``CLIPTextModelWithProjection`` -> OpenCLIP ``conditioner.embedders.1.model.*`` layout."""
    sd = {
        (k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
        for k, v in state_dict.items()
    }
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    out = {
        "token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": sd.pop("text_model.final_layer_norm.bias"),
        # OpenCLIP computes x @ text_projection, so it stores the transpose of the Linear weight.
        "text_projection": sd.pop("text_projection.weight").T.contiguous(),
        # Present in the real file (unused for text); log(1 / 0.07) as OpenCLIP initialises it.
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }
    names = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    layer_ids = sorted({int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers.")})
    for i in layer_ids:
        src = f"text_model.encoder.layers.{i}."
        dst = f"transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{param}"] = torch.cat(
                [sd.pop(f"{src}self_attn.{p}_proj.{param}") for p in ("q", "k", "v")], dim=0
            )
            for hf, oc in names.items():
                out[f"{dst}{oc}.{param}"] = sd.pop(f"{src}{hf}.{param}")
    if sd:
        raise ValueError(f"text_encoder_2 keys with no OpenCLIP equivalent: {sorted(sd)[:10]}")
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


def original_sdxl_state_dict(pipe) -> dict:
    """All weights of an SDXL pipeline, renamed to the original single-file layout."""
    checkpoint = {}
    checkpoint.update(convert_unet_to_original(pipe.unet.state_dict(), pipe.unet.config))
    checkpoint.update(convert_vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    checkpoint.update(convert_clip_l_to_original(pipe.text_encoder.state_dict()))
    checkpoint.update(convert_open_clip_to_original(pipe.text_encoder_2.state_dict()))
    return checkpoint


def write_original_sdxl_checkpoint(pipe, path) -> Path:
    """Save ``pipe`` (a diffusers SDXL pipeline) as one original-layout ``.safetensors`` file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {k: v.detach().cpu().contiguous() for k, v in original_sdxl_state_dict(pipe).items()}
    save_file(checkpoint, str(path))
    return path
