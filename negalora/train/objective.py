"""The training objective: a micro-batch's tensors, the noise put on its latents, what the UNet is
asked to predict, and how the prediction is scored (min-SNR weighting, the prior-preservation weight).

Functions of tensors, the noise scheduler, config values and a generator. The generator is drawn in
one order (the noise, its offset, the timesteps), so a seed always gives the same loss.
"""

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from negalora.train.cache import Sample


@dataclass(frozen=True)
class Batch:
    """A micro-batch. While the text encoders learn, ``embeds`` and ``pooled`` are None and the
    captions are encoded in the loss, with gradients."""

    latents: torch.Tensor  # [b, 4, h, w]
    time_ids: torch.Tensor  # [b, 6]: SDXL's size conditioning
    embeds: torch.Tensor | None = None  # [b, tokens, dim]: the prompt embeddings
    pooled: torch.Tensor | None = None  # [b, dim]: the pooled text embedding
    captions: tuple[str, ...] = ()
    desirable: torch.Tensor | None = None  # KTO: [b] bool, a pick (True) or a reject (False)

    @property
    def encoded(self) -> bool:
        return self.embeds is not None

    def with_text(self, embeds: torch.Tensor, pooled: torch.Tensor) -> "Batch":
        return replace(self, embeds=embeds, pooled=pooled)

    def to(self, device) -> "Batch":
        if self.embeds is None or self.pooled is None:
            raise ValueError("encode the batch's captions first (with_text)")
        return replace(
            self,
            latents=self.latents.to(device),
            time_ids=self.time_ids.to(device),
            embeds=self.embeds.to(device),
            pooled=self.pooled.to(device),
        )


def collate(chosen: Sequence["Sample"], text: Mapping[str, tuple], *, encode_text: bool = False) -> Batch:
    """The batch of ``chosen`` samples with their cached caption embeddings (``text``: caption ->
    (embeds, pooled)); ``encode_text``: leave the captions to the learning text encoders instead."""
    latents = torch.stack([s.latents for s in chosen])
    time_ids = torch.stack([s.time_ids for s in chosen])
    captions = tuple(s.caption for s in chosen)
    if encode_text:
        return Batch(latents, time_ids, captions=captions)
    embeds = [text[c][0] for c in captions]
    longest = max(e.shape[0] for e in embeds)
    if any(e.shape[0] != longest for e in embeds):
        # a caption over 75 tokens makes a longer embedding: the others are padded with the empty
        # prompt's chunk, as Compel pads
        empty = text[""][0]
        embeds = [torch.cat([e] + [empty] * ((longest - e.shape[0]) // empty.shape[0])) for e in embeds]
    pooled = torch.stack([text[c][1] for c in captions])
    return Batch(latents, time_ids, torch.stack(embeds), pooled, captions)


@dataclass(frozen=True)
class Noised:
    noise: torch.Tensor
    timesteps: torch.Tensor
    noisy: torch.Tensor  # the latents with the noise at the timesteps, the UNet's input


def add_noise(latents: torch.Tensor, noise_scheduler, generator: torch.Generator, noise_offset: float = 0.0) -> Noised:
    """Draw the noise (plus ``noise_offset`` times a per-channel constant) and a timestep per image from
    ``generator``, on the CPU so every device draws the same, and noise ``latents`` with them."""
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator).to(device)
    if noise_offset:
        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
        noise = noise + noise_offset * offset.to(device)
    steps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator).to(device)
    return Noised(noise, timesteps, noise_scheduler.add_noise(latents, noise, timesteps))


def is_v_prediction(noise_scheduler) -> bool:
    return noise_scheduler.config.prediction_type == "v_prediction"


def prediction_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """What the UNet should predict: the velocity on a v-prediction model, else the noise itself."""
    if is_v_prediction(noise_scheduler):
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023): each image's loss weighted min(SNR, γ) / SNR, or / (SNR + 1) when
    the model predicts the velocity."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    return weights / (snr + 1 if is_v_prediction(noise_scheduler) else snr)


def prediction_loss(pred, target, noise_scheduler, timesteps, min_snr_gamma: float | None = None) -> torch.Tensor:
    """The mean squared error of the prediction, in fp32, min-SNR weighted per image when ``min_snr_gamma``."""
    if min_snr_gamma is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    weights = min_snr_weights(noise_scheduler, timesteps, min_snr_gamma)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)) * weights
    return loss.mean()


def with_prior(loss: torch.Tensor, class_loss: torch.Tensor, prior_weight: float) -> torch.Tensor:
    """Prior preservation: the class images' loss joins the training images' at ``prior_weight``."""
    return loss + prior_weight * class_loss


def predict(unet, noisy: torch.Tensor, timesteps: torch.Tensor, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
    """The UNet's prediction for the noisy latents, conditioned on the batch's text and sizes."""
    if batch.embeds is None or batch.pooled is None:
        raise ValueError("encode the batch's captions first (with_text)")
    return unet(
        noisy.to(dtype),
        timesteps,
        batch.embeds.to(dtype),
        added_cond_kwargs={"time_ids": batch.time_ids.to(dtype), "text_embeds": batch.pooled.to(dtype)},
        return_dict=False,
    )[0]


def denoising_loss(
    unet,
    noise_scheduler,
    batch: Batch,
    generator: torch.Generator,
    *,
    weight_dtype: torch.dtype = torch.float32,
    noise_offset: float = 0.0,
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """The loss of one encoded micro-batch (its tensors on the UNet's device)."""
    noised = add_noise(batch.latents, noise_scheduler, generator, noise_offset)
    pred = predict(unet, noised.noisy, noised.timesteps, batch, weight_dtype)
    target = prediction_target(noise_scheduler, batch.latents, noised.noise, noised.timesteps)
    return prediction_loss(pred, target, noise_scheduler, noised.timesteps, min_snr_gamma)


# -- learning from preferences (picks, rejects, votes) -------------------------------------------


def image_errors(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each image's mean squared denoising error, in fp32: [b]."""
    return (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))


def kto_loss(
    model_err: torch.Tensor,
    ref_err: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-KTO (Li et al. 2024) on per-image labels. The implicit reward of an image is how much
    better the LoRA denoises it than the frozen base (``ref_err - model_err``); the loss pushes the
    reward of desirable images above the reference point and of undesirable ones below it. The
    reference point is KTO's estimate of the divergence from the base: the batch's mean reward,
    at least 0, with no gradient. Returns the loss and the reward margin (desirable's mean reward
    minus undesirable's; 0 for a side the batch lacks)."""
    reward = ref_err - model_err
    z0 = reward.mean().clamp(min=0).detach()
    inside = torch.where(desirable, beta * (reward - z0), beta * (z0 - reward))
    weights = torch.where(desirable, desirable_weight, undesirable_weight).to(reward)
    loss = (weights * (1 - torch.sigmoid(inside))).mean()
    good, bad = reward[desirable], reward[~desirable]
    margin = (good.mean() if good.numel() else reward.new_zeros(())) - (bad.mean() if bad.numel() else 0.0)
    return loss, margin.detach()


def dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-DPO (Wallace et al. 2023), as diffusers' ``train_diffusion_dpo_sdxl.py``: for pairs of
    a preferred (w) and a rejected (l) image of one prompt, noised alike, the LoRA should lower the
    preferred image's error relative to the base more than the rejected one's. Returns the loss and
    the mean reward margin (the sigmoid's argument: above 0 when the pair is ranked right)."""
    inside = -0.5 * beta * ((model_err_w - model_err_l) - (ref_err_w - ref_err_l))
    return -F.logsigmoid(inside).mean(), inside.mean().detach()


def preference_loss(
    unet,
    reference: Callable[[], AbstractContextManager],
    noise_scheduler,
    batch: Batch,
    generator: torch.Generator,
    *,
    objective: str,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    weight_dtype: torch.dtype = torch.float32,
    noise_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The KTO or DPO loss of one encoded micro-batch and its reward margin. ``reference()`` is a
    context in which ``unet`` predicts as the frozen base (the LoRA off). A DPO batch holds its pairs'
    preferred images first, then their rejected ones in the same order; both get the same noise and
    timestep."""
    latents = batch.latents
    if objective == "dpo":
        half = latents.shape[0] // 2
        drawn = add_noise(latents[:half], noise_scheduler, generator, noise_offset)
        noise, timesteps = drawn.noise.repeat(2, 1, 1, 1), drawn.timesteps.repeat(2)
        noised = Noised(noise, timesteps, noise_scheduler.add_noise(latents, noise, timesteps))
    else:
        noised = add_noise(latents, noise_scheduler, generator, noise_offset)
    target = prediction_target(noise_scheduler, latents, noised.noise, noised.timesteps)
    model_err = image_errors(predict(unet, noised.noisy, noised.timesteps, batch, weight_dtype), target)
    with torch.no_grad(), reference():
        ref_err = image_errors(predict(unet, noised.noisy, noised.timesteps, batch, weight_dtype), target)
    if objective == "dpo":
        (mw, ml), (rw, rl) = model_err.chunk(2), ref_err.chunk(2)
        return dpo_loss(mw, ml, rw, rl, beta)
    if batch.desirable is None:
        raise ValueError("a KTO batch needs its images' labels")
    desirable = batch.desirable.to(model_err.device)
    return kto_loss(model_err, ref_err, desirable, beta, desirable_weight, undesirable_weight)
