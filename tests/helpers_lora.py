"""A LoRA for the demo model, for tests that need one on disk."""

import torch


def write_demo_lora(pipe, path, rank=4, seed=0):
    """A LoRA for the demo UNet's attention, with non-zero up weights so it changes the output."""
    import copy

    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    # On a copy: peft leaves wrappers behind after delete_adapters, which change the last bit of the
    # pipe's own outputs and would spoil pixel-exact comparisons against it.
    unet = copy.deepcopy(pipe.unet)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="tmp"
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name and ".tmp" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    state = get_peft_model_state_dict(unet, adapter_name="tmp")
    StableDiffusionXLPipeline.save_lora_weights(str(path.parent), unet_lora_layers=state, weight_name=path.name)
    return path
