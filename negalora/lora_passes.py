"""Which classifier-free guidance passes a LoRA acts on.

"both" is how every UI applies a LoRA: the UNet sees it on the positive and the negative pass.
"negative" applies it only on the negative (unconditional) pass, so a "wrong" LoRA can push away
from what it learned without changing how the positive prompt is drawn. The SDXL pipeline stacks
[negative; positive] into one UNet call; here that batch is split and the LoRA is switched off
for the positive half.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch

BOTH = "both"
NEGATIVE = "negative"
LORA_PASSES = (BOTH, NEGATIVE)
# How the product applies a LoRA unless told otherwise (generation, comparisons, export notes): on
# the demo world the negative pass alone cut defects where both passes leaked them into the
# positive pass and lost prompt adherence (docs/efficacy.md).
DEFAULT = NEGATIVE
DESCRIPTIONS = {
    BOTH: "both guidance passes (as A1111, ComfyUI and diffusers apply a LoRA)",
    NEGATIVE: "the negative (unconditional) pass only",
}


def check_lora_passes(value: str) -> str:
    from negalora.errors import NegaloraError

    if value not in LORA_PASSES:
        raise NegaloraError(f"LoRA passes {value!r}: must be one of {', '.join(LORA_PASSES)}")
    return value


def _half(value, n: int, second: bool):
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == 2 * n:
        return value[n:] if second else value[:n]
    if isinstance(value, dict):
        return {k: _half(v, n, second) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_half(v, n, second) for v in value)
    return value


@contextmanager
def lora_on_negative_pass(unet) -> Iterator[None]:
    """While active, a UNet call on a [negative; positive] batch runs the LoRA on the first half only."""
    original = unet.forward
    shadowed = "forward" in unet.__dict__  # a wrapper already set on the instance (an offload hook)

    def forward(sample, *args, **kwargs):
        n = sample.shape[0] // 2
        if n == 0 or sample.shape[0] % 2:  # no negative half: the LoRA stays off
            unet.disable_lora()
            try:
                return original(sample, *args, **kwargs)
            finally:
                unet.enable_lora()
        negative = original(_half(sample, n, False), *_half(args, n, False), **_half(kwargs, n, False))
        unet.disable_lora()
        try:
            positive = original(_half(sample, n, True), *_half(args, n, True), **_half(kwargs, n, True))
        finally:
            unet.enable_lora()
        if isinstance(negative, tuple):
            return (torch.cat([negative[0], positive[0]]),)
        negative.sample = torch.cat([negative.sample, positive.sample])
        return negative

    unet.forward = forward  # an instance attribute shadows the class's forward for nn.Module.__call__
    try:
        yield
    finally:
        if shadowed:
            unet.forward = original
        else:
            del unet.forward
