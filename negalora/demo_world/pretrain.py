"""Pre-train the demo model from scratch on the shape world, on the CPU.

The model has the exact SDXL architecture and classes (two CLIP text encoders, the second with a
projection, a ``text_time`` UNet, an AutoencoderKL, the real CLIP BPE tokenizer), only small. The
text encoders stay as built from a fixed seed (frozen random features are enough for 90 captions
and keep the phases short); the VAE learns the world's pixels first, then the UNet learns to draw
the world from its captions. About a third of the training images carry a defect that no caption
mentions, so the trained model makes such defects too: the "wrong" LoRA's reason to exist.

    python -m negalora.demo_world.pretrain --out resources/demo_model

The work folder keeps a checkpoint every few hundred steps; running the same command again
continues where it stopped. Weights are saved in fp16.
"""
# diffusers annotates its constructors' tuple arguments as one-element tuples (tuple[int]) and a
# pipeline's scheduler as an enum; the calls here are the documented ones.
# pyright: reportArgumentType=false

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from negalora.demo_world.world import DEFAULT_DEFECT_RATE, make_dataset

SIZE = 32  # native resolution in pixels
LATENT = SIZE // 4  # a 3-level VAE halves twice
SEED = 20261122
TIME_EMBED = 16
TEXT_HIDDEN, TEXT_HIDDEN_2 = 32, 48
VOCAB = 49408
TIME_IDS = (SIZE, SIZE, 0, 0, SIZE, SIZE)  # original size, crop top-left, target size
UNCOND_RATE = 0.1  # captions dropped to the empty prompt, so classifier-free guidance works


def _text_config(hidden_act: str, hidden: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=3,  # SDXL reads the penultimate layer
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def build_untrained():
    """The demo pipeline before training, the same on every call."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from negalora.models.tokenizer import PAD_CLIP_L, PAD_OPENCLIP, clip_tokenizer

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=LATENT,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 96, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1),
        attention_head_dim=4,
        use_linear_projection=True,
        norm_num_groups=16,
        cross_attention_dim=TEXT_HIDDEN + TEXT_HIDDEN_2,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_HIDDEN_2,
    )
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=SIZE,
        scaling_factor=1.0,  # measured after the VAE is trained
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


def world_tensors(n: int, seed: int, defect_rate: float) -> tuple[torch.Tensor, list[str], list[str | None]]:
    """n world images as uint8 [n, 3, S, S], with their captions and (hidden) defects."""
    pixels = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
    captions, defects = [], []
    for i, sample in enumerate(make_dataset(n, seed, defect_rate, SIZE)):
        pixels[i] = np.asarray(sample.image).transpose(2, 0, 1)
        captions.append(sample.caption)
        defects.append(sample.defect)
    return torch.from_numpy(pixels), captions, defects


def _to_unit(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1.0


def _batch_index(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Batches are a pure function of (seed, step): a resumed phase draws what it would have drawn."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (batch,), generator=g)


class Phase:
    """One training phase with checkpoints in the work folder (weights, EMA and optimizer, no pickles)."""

    def __init__(self, name: str, work: Path, model: torch.nn.Module, lr: float, steps: int, every: int):
        from diffusers.optimization import get_cosine_schedule_with_warmup

        self.name, self.work, self.model, self.steps, self.every = name, work, model, steps, every
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.schedule = get_cosine_schedule_with_warmup(self.optimizer, min(200, steps // 10), steps)
        self.ema = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.step = 0

    @property
    def path(self) -> Path:
        return self.work / f"{self.name}.safetensors"

    def resume(self) -> None:
        from negalora.train.resume_state import load_resume_state

        if not self.path.exists():
            return
        meta = load_resume_state(self.path, self.optimizer)
        parts = meta["lora"]  # the saved tensors, by part
        self.model.load_state_dict(parts["model"])
        self.ema = parts["ema"]
        self.step = meta["step"]
        for _ in range(self.step):
            self.schedule.step()

    def save(self) -> None:
        from negalora.train.resume_state import save_resume_state

        save_resume_state(
            self.path,
            step=self.step,
            optimizer=self.optimizer,
            lora={"model": self.model.state_dict(), "ema": self.ema},
            extra={"phase": self.name},
        )

    def update(self, loss: torch.Tensor, decay: float) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            warm = min(decay, (1 + self.step) / (10 + self.step))  # a young EMA follows closely
            for n, p in self.model.named_parameters():
                self.ema[n].mul_(warm).add_(p.detach(), alpha=1 - warm)
        self.step += 1
        if self.step % self.every == 0 or self.step == self.steps:
            self.save()

    def use_ema(self) -> None:
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(self.ema[n])


def train_vae(vae, pixels: torch.Tensor, work: Path, steps: int, batch: int, progress) -> float:
    """Reconstruction with a light KL term; returns the latents' scaling factor (1 / std)."""
    phase = Phase("vae", work, vae, lr=1e-3, steps=steps, every=250)
    phase.resume()
    vae.train()
    while phase.step < steps:
        x = _to_unit(pixels[_batch_index(len(pixels), batch, phase.step, SEED)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=torch.Generator().manual_seed(phase.step))).sample
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        phase.update(loss, decay=0.999)
        progress("vae", phase.step, steps, float(loss))
    phase.use_ema()
    vae.eval()
    with torch.no_grad():
        sample = _to_unit(pixels[:2048])
        latents = torch.cat([vae.encode(sample[i : i + 256]).latent_dist.mean for i in range(0, len(sample), 256)])
    return float(1.0 / latents.std())


@torch.no_grad()
def encode_world(vae, pixels: torch.Tensor, scaling: float) -> torch.Tensor:
    """The posterior means, as negalora's trainer caches them (deterministic)."""
    out = [vae.encode(_to_unit(pixels[i : i + 256])).latent_dist.mean for i in range(0, len(pixels), 256)]
    return torch.cat(out) * scaling


@torch.no_grad()
def caption_table(pipe, captions: list[str]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Each distinct caption's embeddings as generation makes them (Compel, both encoders); the
    empty prompt is all zeros, as the pipeline makes it for an empty negative."""
    from negalora.prompts import Conditioner

    conditioner = Conditioner(pipe)
    names = sorted(set(captions))
    embeds, pooled = [], []
    for c in names:
        cond = conditioner.encode(c, "")
        embeds.append(cond.embeds[0])
        pooled.append(cond.pooled[0])
    return names, torch.stack(embeds), torch.stack(pooled)


def train_unet(unet, latents, caption_ids, embeds, pooled, work: Path, steps: int, batch: int, progress) -> None:
    """Epsilon prediction on SDXL's noise schedule, min-SNR weighted, with caption dropout for CFG."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    noise_scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    phase = Phase("unet", work, unet, lr=6e-4, steps=steps, every=250)
    phase.resume()
    unet.train()
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32).repeat(batch, 1)
    while phase.step < steps:
        idx = _batch_index(len(latents), batch, phase.step, SEED + 1)
        g = torch.Generator().manual_seed(SEED * 7 + phase.step)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        drop = torch.rand(batch, generator=g) < UNCOND_RATE
        e = embeds[caption_ids[idx]] * (~drop)[:, None, None]
        p = pooled[caption_ids[idx]] * (~drop)[:, None]
        pred = unet(
            noise_scheduler.add_noise(x0, noise, t), t, e, added_cond_kwargs={"text_embeds": p, "time_ids": time_ids}
        ).sample
        snr = compute_snr(noise_scheduler, t)
        weights = torch.clamp(snr, max=5.0) / snr
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
        phase.update(loss, decay=0.9995)
        progress("unet", phase.step, steps, float(loss))
    phase.use_ema()
    unet.eval()


def save_fp16(pipe, out: Path, info: dict) -> None:
    """Write the pipeline as a diffusers folder in fp16, replacing ``out`` only when complete."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out.parent))
    try:
        pipe.to(torch.float16)
        pipe.save_pretrained(tmp, safe_serialization=True)
        pipe.to(torch.float32)
        for name in ("tokenizer", "tokenizer_2"):  # rebuilt from resources/clip_tokenizer when the demo is set up
            shutil.rmtree(tmp / name)
        (tmp / "negalora_demo.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _progress_printer():
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(phase: str, step: int, steps: int, loss: float) -> None:
        if phase not in bars:
            bars[phase] = tqdm(total=steps, initial=step - 1, desc=phase, unit="step", file=sys.stderr)
        bars[phase].update(1)
        bars[phase].set_postfix(loss=f"{loss:.4f}", refresh=False)

    return progress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m negalora.demo_world.pretrain",
        description="Pre-train negalora's demo model (exact SDXL architecture, tiny) on the shape world, on the CPU.",
    )
    parser.add_argument("--out", type=Path, default=Path("resources/demo_model"), help="diffusers folder to write")
    parser.add_argument("--work", type=Path, default=Path(".pretrain"), help="checkpoints for resuming")
    parser.add_argument("--images", type=int, default=20000, help="world images to train on (default 20000)")
    parser.add_argument("--defect-rate", type=float, default=DEFAULT_DEFECT_RATE)
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny fresh weights make denormals, which are 10x slower on the CPU
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    progress = _progress_printer()
    pixels, captions, defects = world_tensors(args.images, SEED, args.defect_rate)
    pipe = build_untrained()
    for part in (pipe.text_encoder, pipe.text_encoder_2):
        part.requires_grad_(False)
    scaling = train_vae(pipe.vae, pixels, args.work, args.vae_steps, args.batch, progress)
    pipe.vae.register_to_config(scaling_factor=scaling)
    pipe.vae.requires_grad_(False)
    latents = encode_world(pipe.vae, pixels, scaling)
    names, embeds, pooled = caption_table(pipe, captions)
    index = {c: i for i, c in enumerate(names)}
    caption_ids = torch.tensor([index[c] for c in captions])
    train_unet(pipe.unet, latents, caption_ids, embeds, pooled, args.work, args.unet_steps, args.batch, progress)
    info = {
        "name": "demo",
        "native_size": SIZE,
        "world_seed": SEED,
        "images": args.images,
        "defect_rate": args.defect_rate,
        "defects_in_training_images": sum(d is not None for d in defects),
        "vae_steps": args.vae_steps,
        "unet_steps": args.unet_steps,
        "batch": args.batch,
        "scaling_factor": scaling,
        "command": "python -m negalora.demo_world.pretrain " + " ".join(argv if argv is not None else sys.argv[1:]),
        "minutes_this_session": round((time.monotonic() - started) / 60, 1),
    }
    save_fp16(pipe, args.out, info)
    print(json.dumps(info, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
