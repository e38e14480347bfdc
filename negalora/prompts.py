"""Prompt weighting with Compel for SDXL: both text encoders, pooled embeds, no truncation.
Prompts are checked first (``negalora.prompt_syntax``)."""

from collections import OrderedDict
from dataclasses import dataclass

import torch
from compel import CompelForSDXL

from negalora.errors import NegaloraError
from negalora.prompt_syntax import check_prompt

__all__ = ["Conditioner", "Conditioning", "RefinerConditioner", "check_prompt"]


@dataclass(frozen=True)
class Conditioning:
    """Everything the SDXL UNet needs from the prompts, positive and negative of equal length."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    negative_embeds: torch.Tensor
    negative_pooled: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in (self.embeds, self.pooled, self.negative_embeds, self.negative_pooled)
        )

    def pipeline_kwargs(self) -> dict:
        return {
            "prompt_embeds": self.embeds,
            "pooled_prompt_embeds": self.pooled,
            "negative_prompt_embeds": self.negative_embeds,
            "negative_pooled_prompt_embeds": self.negative_pooled,
        }


class Conditioner:
    """Encodes prompts for one SDXL pipeline and remembers the most recently used results.

    Compel's parser costs about 40 ms a prompt whatever the model; on the demo model that is most
    of an image's time. A batch that cycles through many prompts (a session, a comparison's test
    set) hits the cache once each prompt has been seen, so the budget is in bytes of embeddings
    (an SDXL prompt pair is about 0.6 MB in fp16), not in entries."""

    def __init__(self, pipe, cache_bytes: int = 64 << 20):
        self._pipe = pipe
        self._compel = CompelForSDXL(pipe, device=pipe.device)
        self._cache: OrderedDict[tuple[str, str, str], Conditioning] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._held = 0  # bytes of the cached tensors

    def clear(self) -> None:
        """Forget cached results (the text encoders changed: a LoRA on them was loaded or removed)."""
        self._cache.clear()
        self._held = 0

    @torch.no_grad()
    def encode(self, prompt: str, negative: str = "", variant: str = "") -> Conditioning:
        """``variant`` names a state of the text encoders (a LoRA switched off) that the cache must tell apart."""
        key = (prompt, negative, variant)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        check_prompt(prompt)
        check_prompt(negative)
        out = self._compel(prompt, negative_prompt=negative)
        pooled, neg, neg_pooled = out.pooled_embeds, out.negative_embeds, out.negative_pooled_embeds
        if pooled is None or neg is None or neg_pooled is None:  # compel built without requires_pooled
            raise NegaloraError("compel returned no pooled or negative embeddings")
        if not negative and self._pipe.config.get("force_zeros_for_empty_prompt", False):
            # As the SDXL pipeline does for an empty negative prompt.
            neg, neg_pooled = torch.zeros_like(out.embeds), torch.zeros_like(pooled)
        cond = Conditioning(out.embeds, pooled, neg, neg_pooled)
        self._cache[key] = cond
        self._held += cond.nbytes
        while self._held > self._cache_bytes and len(self._cache) > 1:  # the newest always stays
            self._held -= self._cache.popitem(last=False)[1].nbytes
        return cond

    @property
    def cached(self) -> int:
        return len(self._cache)


class RefinerConditioner:
    """The SDXL refiner reads only the second text encoder (OpenCLIP bigG)."""

    def __init__(self, refiner):
        from compel import Compel, ReturnedEmbeddingsType

        self._compel = Compel(
            tokenizer=refiner.tokenizer_2,
            text_encoder=refiner.text_encoder_2,
            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            requires_pooled=True,
            truncate_long_prompts=False,
            device=refiner.device,
        )

    @torch.no_grad()
    def encode(self, prompt: str, negative: str = "") -> Conditioning:
        check_prompt(prompt)
        check_prompt(negative)
        embeds, pooled = _with_pooled(self._compel(prompt))
        neg, neg_pooled = _with_pooled(self._compel(negative))
        embeds, neg = self._compel.pad_conditioning_tensors_to_same_length([embeds, neg])
        return Conditioning(embeds, pooled, neg, neg_pooled)


def _with_pooled(out) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, pooled) from a Compel built with ``requires_pooled``."""
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], torch.Tensor)):
        raise NegaloraError("compel returned no pooled embeddings")
    return out[0], out[1]
