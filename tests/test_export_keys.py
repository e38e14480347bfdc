"""kohya key names for the real SDXL architecture (built on the meta device, no weights), checked
against the rules ComfyUI and A1111 use to find a LoRA's modules. The expected names are written
from those rules, not from negalora's converter:

- ComfyUI, comfy/lora.py ``model_lora_keys_unet``: for every diffusers UNet weight key k listed by
  comfy/utils.py ``unet_to_diffusers(unet_config)``, the LoRA name ``lora_unet_`` + k without
  ``.weight``, ``.`` -> ``_``. ``model_lora_keys_clip``: ``lora_te1_text_model_encoder_layers_{b}_{c}``
  (CLIP-L) and ``lora_te2_…`` (bigG) with c in self_attn_{q,k,v,out}_proj.
- A1111, extensions-builtin/Lora/networks.py ``convert_diffusers_name_to_compvis`` and the fallbacks
  in ``load_network``: the name must land on a module of A1111's SDXL model (sgm names).
"""

import re

import pytest
import torch

from negalora.errors import NegaloraError
from negalora.export.kohya_keys import kohya_module_name, lora_modules, split_key, to_kohya
from negalora.resources import SDXL_BASE_CONFIG
from negalora.train.config import PRESETS

# ComfyUI's SDXL base unet_config (comfy/model_detection.py, supported_models.py)
SDXL = {
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10,
}
ATTENTION_WEIGHTS = [f"{a}.{p}.weight" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")]
CLIP_ATTENTION = ["self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj"]


def comfy_attention_map(cfg) -> dict[str, str]:
    """The attention part of ComfyUI's unet_to_diffusers: diffusers weight key -> sgm weight key."""
    num_res_blocks, depth, depth_out = (
        cfg["num_res_blocks"],
        cfg["transformer_depth"][:],
        cfg["transformer_depth_output"][:],
    )
    out = {}
    for x in range(len(cfg["channel_mult"])):
        n = 1 + (num_res_blocks[x] + 1) * x
        for i in range(num_res_blocks[x]):
            for t in range(depth.pop(0)):
                for b in ATTENTION_WEIGHTS:
                    out[f"down_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"] = (
                        f"input_blocks.{n}.1.transformer_blocks.{t}.{b}"
                    )
            n += 1
    for t in range(cfg["transformer_depth_middle"]):
        for b in ATTENTION_WEIGHTS:
            out[f"mid_block.attentions.0.transformer_blocks.{t}.{b}"] = f"middle_block.1.transformer_blocks.{t}.{b}"
    blocks = list(reversed(num_res_blocks))
    for x in range(len(cfg["channel_mult"])):
        n = (blocks[x] + 1) * x
        for i in range(blocks[x] + 1):
            for t in range(depth_out.pop()):
                for b in ATTENTION_WEIGHTS:
                    out[f"up_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"] = (
                        f"output_blocks.{n}.1.transformer_blocks.{t}.{b}"
                    )
            n += 1
    return out


def comfy_lora_names() -> set[str]:
    unet = {"lora_unet_" + k[: -len(".weight")].replace(".", "_") for k in comfy_attention_map(SDXL)}
    te1 = {f"lora_te1_text_model_encoder_layers_{b}_{c}" for b in range(12) for c in CLIP_ATTENTION}
    te2 = {f"lora_te2_text_model_encoder_layers_{b}_{c}" for b in range(32) for c in CLIP_ATTENTION}
    return unet | te1 | te2


def a1111_sdxl_modules() -> set[str]:
    """A1111's network_layer_mapping for SDXL, for the modules a LoRA on attention can hit: the sgm UNet
    (``diffusion_model_…``), CLIP-L as embedder 0 (``0_transformer_text_model_…``) and OpenCLIP bigG as
    embedder 1, whose attention is one nn.MultiheadAttention (``1_model_transformer_resblocks_{i}_attn``)."""
    unet = {"diffusion_model_" + v[: -len(".weight")].replace(".", "_") for v in comfy_attention_map(SDXL).values()}
    te1 = {f"0_transformer_text_model_encoder_layers_{i}_{c}" for i in range(12) for c in CLIP_ATTENTION}
    te2 = {f"1_model_transformer_resblocks_{i}_attn{s}" for i in range(32) for s in ("", "_out_proj")}
    return unet | te1 | te2


def a1111_lookup(name: str, modules: set[str]) -> str | None:
    """A1111's load_network lookup for one LoRA module name (the branches an SDXL attention LoRA meets)."""

    def convert(key):
        if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
            b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
            return f"diffusion_model_input_blocks_{1 + b * 3 + i}_{1 if kind == 'attentions' else 0}_{rest}"
        if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
            return f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{m[3]}"
        if m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
            b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
            return f"diffusion_model_output_blocks_{b * 3 + i}_{1 if kind == 'attentions' else 0}_{rest}"
        if m := re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", key):
            return f"1_model_transformer_resblocks_{m[1]}_{m[2].replace('self_attn', 'attn')}"
        return key

    key = convert(name)
    if key in modules:
        return key
    if (m := re.match(r"(.*)_([qkv]_proj)$", key)) and m[1] in modules:
        return m[1]  # q/k/v of a MultiheadAttention: one module with in_proj
    if "lora_te1_text_model" in name:
        key = name.replace("lora_te1_text_model", "0_transformer_text_model")
        return key if key in modules else None
    return None


@pytest.fixture(scope="module")
def sdxl_lora_keys():
    """A rank-4 LoRA on the attention of SDXL base's UNet and both text encoders, as peft keys."""
    from diffusers import UNet2DConditionModel
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from negalora.train.lora import add_lora

    config = PRESETS["woolf"]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(SDXL_BASE_CONFIG / "unet")))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(str(SDXL_BASE_CONFIG / "text_encoder")))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(SDXL_BASE_CONFIG / "text_encoder_2")))
        add_lora(unet, config)
        add_lora(te1, config, text=True)
        add_lora(te2, config, text=True)
    keys = {}
    for prefix, model in (("unet", unet), ("text_encoder", te1), ("text_encoder_2", te2)):
        keys.update({f"{prefix}.{k}": v for k, v in get_peft_model_state_dict(model).items()})
    return keys


def test_sdxl_kohya_names_are_exactly_comfyuis(sdxl_lora_keys):
    names = {kohya_module_name(c, m) for c, m in lora_modules(sdxl_lora_keys)}
    expected = comfy_lora_names()
    assert len(expected) == 560 + 12 * 4 + 32 * 4
    assert names == expected


def test_every_sdxl_kohya_name_lands_on_an_a1111_module(sdxl_lora_keys):
    modules = a1111_sdxl_modules()
    names = sorted(kohya_module_name(c, m) for c, m in lora_modules(sdxl_lora_keys))
    missed = [n for n in names if a1111_lookup(n, modules) is None]
    assert not missed
    # spot checks of the mapping itself
    assert (
        a1111_lookup("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k", modules)
        == "diffusion_model_input_blocks_4_1_transformer_blocks_0_attn1_to_k"
    )
    assert (
        a1111_lookup("lora_te2_text_model_encoder_layers_31_self_attn_q_proj", modules)
        == "1_model_transformer_resblocks_31_attn"
    )


def test_kohya_tensors_are_down_up_alpha_triples_with_the_given_alpha():
    tensors = {
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight": torch.ones(4, 8),
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight": torch.ones(8, 4),
        "text_encoder.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight": torch.ones(4, 6),
        "text_encoder.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight": torch.ones(6, 4),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.out_proj.lora_A.weight": torch.ones(4, 6),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.out_proj.lora_B.weight": torch.ones(6, 4),
    }
    out = to_kohya(tensors, {"unet": 1.0, "text_encoder": 1.0, "text_encoder_2": 1.0})
    assert set(out) == {
        f"{m}.{p}"
        for m in (
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",  # transformers 5 has no text_model level
            "lora_te2_text_model_encoder_layers_0_self_attn_out_proj",
        )
        for p in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert all(out[k].item() == 1.0 and out[k].dim() == 0 for k in out if k.endswith(".alpha"))


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"vae.decoder.lora.down.weight": torch.ones(2, 2)}, "not a UNet or text-encoder key"),
        ({"unet.a.to_q.weight": torch.ones(2, 2)}, "not a LoRA down/up weight"),
        ({"unet.a.to_q.lora.down.weight": torch.ones(4, 8)}, "no other half"),
        (
            {"unet.a.to_q.lora.down.weight": torch.ones(4, 8), "unet.a.to_q.lora.up.weight": torch.ones(8, 2)},
            "not a LoRA pair",
        ),
    ],
)
def test_keys_that_are_not_a_lora_are_refused_by_name(tensors, message):
    with pytest.raises(NegaloraError, match=message):
        to_kohya(tensors, {"unet": 1.0})


def test_split_key_reads_every_spelling():
    for suffix, part in (
        (".lora_A.weight", "down"),
        (".lora.up.weight", "up"),
        (".lora_linear_layer.down.weight", "down"),
    ):
        assert split_key("unet.x.to_k" + suffix) == ("unet", "x.to_k", part)
