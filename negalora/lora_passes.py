"""Which classifier-free guidance passes a LoRA acts on.

"both" is how every UI applies a LoRA: the UNet sees it on the positive and the negative pass.
"negative" applies it only on the negative (unconditional) pass, so a "wrong" LoRA can push away
from what it learned without changing how the positive prompt is drawn. The SDXL pipeline stacks
[negative; positive] into one UNet call; here that batch is split and the LoRA is switched off
for the positive half. A LoRA on the text encoders acts on the negative prompt's encoding only.

``negative_pass(pipe)`` is the public form, for a diffusers pipeline that loaded the LoRA with
``load_lora_weights``; ``positive_pass(pipe)`` is its mirror, for a LoRA of what is liked (KTO, DPO,
a picks LoRA). The app renders through the same code. torch is imported only when a
pass is applied; the names are ``negalora.api``'s.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from negalora.api import BOTH, DEFAULT, LORA_PASSES, NEGATIVE, POSITIVE, check_lora_passes
from negalora.api import LORA_PASS_DESCRIPTIONS as DESCRIPTIONS

__all__ = [
    "BOTH",
    "DEFAULT",
    "DESCRIPTIONS",
    "LORA_PASSES",
    "NEGATIVE",
    "POSITIVE",
    "check_lora_passes",
    "negative_pass",
    "positive_pass",
]


def _half(value: Any, n: int, second: bool) -> Any:
    import torch

    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == 2 * n:
        return value[n:] if second else value[:n]
    if isinstance(value, dict):
        return {k: _half(v, n, second) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_half(v, n, second) for v in value)
    return value


@contextmanager
def lora_on_negative_pass(unet, guided: Callable[[], bool] | None = None) -> Iterator[None]:
    """While active, a UNet call on a [negative; positive] batch runs the LoRA on the first half only.
    ``guided`` says, at each call, whether the batch has a negative half at all (the pipeline's
    ``do_classifier_free_guidance``); without one the LoRA stays off."""
    with lora_on_passes(unet, None, [], guided):
        yield


@contextmanager
def _adapters(unet, layers: list, names: list[str] | None) -> Iterator[None]:
    """The UNet's calls inside run these adapters: None all of them (as loaded), [] none."""
    if names is None:
        yield
        return
    if not names:
        unet.disable_lora()
        try:
            yield
        finally:
            unet.enable_lora()
        return
    before = [layer.active_adapters for layer in layers]
    for layer in layers:
        layer.set_adapter([n for n in names if n in layer.lora_A])
    try:
        yield
    finally:
        for layer, active in zip(layers, before, strict=True):
            layer.set_adapter(active)


@contextmanager
def lora_on_passes(
    unet, negative: list[str] | None, positive: list[str] | None, guided: Callable[[], bool] | None = None
) -> Iterator[None]:
    """While active, a UNet call on a [negative; positive] batch runs the adapters ``negative`` on the
    first half and ``positive`` on the second (None: every loaded adapter; []: none). Without a
    negative half (``guided`` false, CFG 1) the whole batch is the positive pass."""
    import torch

    layers = []
    if negative or positive:  # named adapters: the LoRA layers, found once
        from peft.tuners.lora import LoraLayer

        layers = [m for m in unet.modules() if isinstance(m, LoraLayer)]
    original = unet.forward
    shadowed = "forward" in unet.__dict__  # a wrapper already set on the instance (an offload hook)

    def forward(sample, *args, **kwargs):
        n = sample.shape[0] // 2
        if n == 0 or sample.shape[0] % 2 or (guided is not None and not guided()):  # no negative half
            with _adapters(unet, layers, positive):
                return original(sample, *args, **kwargs)
        with _adapters(unet, layers, negative):
            first = original(_half(sample, n, False), *_half(args, n, False), **_half(kwargs, n, False))
        with _adapters(unet, layers, positive):
            second = original(_half(sample, n, True), *_half(args, n, True), **_half(kwargs, n, True))
        if isinstance(first, tuple):
            return (torch.cat([first[0], second[0]]),)
        first.sample = torch.cat([first.sample, second.sample])
        return first

    unet.forward = forward  # an instance attribute shadows the class's forward for nn.Module.__call__
    try:
        yield
    finally:
        if shadowed:
            unet.forward = original
        else:
            del unet.forward


def adapted_text_encoders(pipe) -> list:
    """The pipeline's text encoders that carry a LoRA."""
    encoders = (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
    return [te for te in encoders if te is not None and getattr(te, "peft_config", None)]


@contextmanager
def text_encoder_lora_off(pipe) -> Iterator[bool]:
    """The text encoders' LoRA switched off while active; yields whether there was one."""
    from diffusers.loaders.lora_base import disable_lora_for_text_encoder, enable_lora_for_text_encoder

    encoders = adapted_text_encoders(pipe)
    for te in encoders:
        disable_lora_for_text_encoder(te)
    try:
        yield bool(encoders)
    finally:
        for te in encoders:
            enable_lora_for_text_encoder(te)


@contextmanager
def text_encoder_adapters(pipe, names: list[str] | None) -> Iterator[None]:
    """The adapted text encoders run these adapters while active (None: all, []: none)."""
    encoders = adapted_text_encoders(pipe)
    if names is None or not encoders:
        yield
        return
    if not names:
        with text_encoder_lora_off(pipe):
            yield
        return
    from peft.tuners.lora import LoraLayer

    layers = [m for te in encoders for m in te.modules() if isinstance(m, LoraLayer)]
    with _adapters(None, layers, names):
        yield


def _one_pass_encode_prompt(pipe, original, negative: bool):
    """``pipe.encode_prompt`` with the other pass's prompt encoded without the text encoders' LoRA."""

    def encode_prompt(*args, **kwargs):
        if not adapted_text_encoders(pipe):
            return original(*args, **kwargs)
        embeds, negative_embeds, pooled, negative_pooled = original(*args, **kwargs)
        with text_encoder_lora_off(pipe):
            plain = original(*args, **kwargs)
        if negative:
            return plain[0], negative_embeds, plain[2], negative_pooled
        return embeds, plain[1], pooled, plain[3]

    return encode_prompt


@contextmanager
def _one_pass(pipe, text_encoders: bool, negative: bool) -> Iterator:
    guided = getattr(type(pipe), "do_classifier_free_guidance", None)
    predicate = (lambda: bool(pipe.do_classifier_free_guidance)) if isinstance(guided, property) else None
    patched = text_encoders and hasattr(pipe, "encode_prompt")
    if patched:
        original = pipe.encode_prompt
        shadowed = "encode_prompt" in pipe.__dict__
        pipe.encode_prompt = _one_pass_encode_prompt(pipe, original, negative)
    try:
        with lora_on_passes(pipe.unet, None if negative else [], [] if negative else None, predicate):
            yield pipe
    finally:
        if patched:
            if shadowed:
                pipe.encode_prompt = original
            else:
                del pipe.encode_prompt


@contextmanager
def negative_pass(pipe, text_encoders: bool = True) -> Iterator:
    """Apply the pipeline's loaded LoRA on the negative guidance pass only::

        pipe.load_lora_weights("wrong.safetensors")
        with negative_pass(pipe):
            image = pipe("a cat", negative_prompt="wrong").images[0]

    The UNet's LoRA acts on the negative half of each guided step and is off for the positive half
    (off entirely at CFG 1 or below, where there is no negative pass); a LoRA on the text encoders
    encodes the negative prompt only. ``text_encoders=False`` leaves ``encode_prompt`` alone, for
    callers that pass their own embeddings (the app, with Compel).

    Every adapter loaded into the pipeline is switched together (one ``wrong`` LoRA is what it is
    for), and the ``encode_prompt`` wrapper expects SDXL's four embeddings: it is for SDXL pipelines."""
    with _one_pass(pipe, text_encoders, negative=True):
        yield pipe


@contextmanager
def positive_pass(pipe, text_encoders: bool = True) -> Iterator:
    """Apply the pipeline's loaded LoRA on the positive guidance pass only, the way a LoRA of what
    is liked (KTO, DPO) measured best in negalora's demo world::

        pipe.load_lora_weights("liked.safetensors")
        with positive_pass(pipe):
            image = pipe("a cat").images[0]

    The mirror of ``negative_pass``: the UNet's LoRA is off on the negative half of each guided step
    (at CFG 1 or below, with no negative pass, it acts on the whole batch); a LoRA on the text
    encoders encodes the prompt only, not the negative prompt."""
    with _one_pass(pipe, text_encoders, negative=False):
        yield pipe


@contextmanager
def lora_off(unet) -> Iterator[None]:
    unet.disable_lora()
    try:
        yield
    finally:
        unet.enable_lora()
