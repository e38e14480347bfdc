"""The first numbers on a GPU: a full-size SDXL with random weights, built from the configs in
``resources/sdxl_base`` straight into bf16 (fp16 where bf16 is missing) on the device, so no weights
need to reach the machine. Times, in one run of under 8 minutes on one CUDA GPU:

- 1024² generation, 30 Euler steps, CFG 7, SDPA: negalora's ``Generator`` (Compel, the LoRA-pass
  machinery, progress and cancel checks, NaN guard) against a raw diffusers ``pipe(...)`` call on the
  same weights; then a batch of 4 both ways (s/image);
- a 1024² LoRA training step as negalora's trainer takes it (peft LoRA from ``negalora.train.lora``
  on the UNet's attention, batch 1, cached latents: no VAE in the step), with and without gradient
  checkpointing, with AdamW and, where bitsandbytes is installed, 8-bit AdamW (s/step, it/s);
- peak VRAM of each part, and the peak host RSS while the model is built.

The anchor: diffusers' blog gives 4.63 s/image for SDXL at 30 steps on an A100 in bf16.

    python benchmarks/bench_gpu.py [--device cuda] [--repeat 3] [--json]
    python benchmarks/bench_gpu.py --tiny      # the same code on the demo model's shapes, on the CPU

``--tiny`` (what the test suite runs, so the script cannot rot) builds the demo model's configuration
with random weights instead, at 64² and 4 steps.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from negalora.device import Placement  # noqa: E402
from negalora.resources import DEMO_MODEL, SDXL_BASE_CONFIG  # noqa: E402

ANCHOR_A100_S_PER_IMAGE = 4.63  # diffusers' blog, SDXL base, 30 steps, A100, bf16
PROMPT = "a photo of an astronaut riding a horse on the moon, detailed, 8k"
NEGATIVE = "wrong"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _text_config(folder: Path, dtype: torch.dtype):
    from transformers import CLIPTextConfig

    config = CLIPTextConfig.from_pretrained(str(folder))
    config.torch_dtype = config.dtype = dtype  # the config's own (fp16 in a saved folder) would win
    return config


def build_random_sdxl(config_dir: Path, device: torch.device, dtype: torch.dtype):
    """An SDXL pipeline of random weights: every module is created on ``device`` in ``dtype``, never
    in fp32 on the host first."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from negalora.models.tokenizer import PAD_CLIP_L, PAD_OPENCLIP, clip_tokenizer

    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(config_dir / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(config_dir / "vae")))
        te = CLIPTextModel(_text_config(config_dir / "text_encoder", dtype))
        te2 = CLIPTextModelWithProjection(_text_config(config_dir / "text_encoder_2", dtype))
    scheduler = EulerDiscreteScheduler.from_pretrained(str(config_dir / "scheduler"))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te,
        text_encoder_2=te2,
        tokenizer=clip_tokenizer(PAD_CLIP_L),
        tokenizer_2=clip_tokenizer(PAD_OPENCLIP),
        unet=unet.eval(),
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_vram_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def timed(fn, device, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def bench_generation(pipe, placement: Placement, size: int, steps: int, repeat: int) -> dict:
    from negalora.generate import GenerateRequest, Generator
    from negalora.models.loader import LoadedModel

    device = placement.device
    model = LoadedModel(
        pipe=pipe,
        name="random-sdxl",
        source="folder",
        location=str(SDXL_BASE_CONFIG),
        sha256="0" * 64,
        native_size=size,
        placement=placement,
        scheduler_config=dict(pipe.scheduler.config),
    )
    generator = Generator(model)
    request = GenerateRequest(prompts=(PROMPT,), negative=NEGATIVE, seed=1, steps=steps, guidance=7.0, width=size)
    recipe = generator.plan(request)[0]
    batch = generator.plan(replace(request, count=4))

    def ours(n: int):
        recipes = batch if n > 1 else [recipe]
        return lambda: generator.render_batch(recipes)

    def direct(n: int):
        def run():
            pipe.scheduler = generator._scheduler("Euler")
            pipe(
                prompt=PROMPT,
                negative_prompt=NEGATIVE,
                num_images_per_prompt=n,
                num_inference_steps=steps,
                guidance_scale=7.0,
                width=size,
                height=size,
                generator=[torch.Generator("cpu").manual_seed(1 + k) for k in range(n)],
                output_type="np",
            )

        return run

    out = {}
    for n in (1, 4):
        reset_peak(device)
        ours(n)(), direct(n)()  # warm-up: kernels chosen, caches filled
        t_ours, t_direct = [], []
        for i in range(repeat):  # interleaved, so drift hits both alike
            pair = [(t_ours, ours(n)), (t_direct, direct(n))]
            for times, fn in pair if i % 2 == 0 else reversed(pair):
                times += timed(fn, device, 1)
        ours_s, direct_s = statistics.median(t_ours) / n, statistics.median(t_direct) / n
        out[f"batch {n}"] = {
            "negalora_s_per_image": round(ours_s, 3),
            "diffusers_s_per_image": round(direct_s, 3),
            "ratio": round(ours_s / direct_s, 3),
            "negalora_it_s": round(steps / (ours_s * n), 2),
            "peak_vram_mb": peak_vram_mb(device),
        }
    return out


def bench_training(pipe, placement: Placement, size: int, repeat: int) -> dict:
    from negalora.train.config import TrainConfig
    from negalora.train.lora import add_lora

    device, dtype = placement.device, placement.dtype
    unet = pipe.unet
    params = add_lora(unet, TrainConfig(rank=16))
    unet.train()
    latents = torch.randn(1, 4, size // 8, size // 8, device=device, dtype=dtype)  # cached: no VAE
    embeds = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    pooled = torch.randn(1, pipe.text_encoder_2.config.projection_dim, device=device, dtype=dtype)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype)
    sched = pipe.scheduler
    optimizers = {"adamw": lambda: torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda" or None)}
    try:
        import bitsandbytes as bnb

        if device.type == "cuda":
            optimizers["adamw8bit"] = lambda: bnb.optim.AdamW8bit(params, lr=1e-4)
    except ImportError:
        pass

    def step(opt):
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (1,), device=device)
        noisy = sched.add_noise(latents, noise, t)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            pred = unet(noisy, t, embeds, added_cond_kwargs={"time_ids": time_ids, "text_embeds": pooled}).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out = {}
    for checkpointing in (False, True):
        if checkpointing:
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()
        for name, make in optimizers.items():
            opt = make()
            reset_peak(device)
            step(opt)  # warm-up
            times = timed(lambda opt=opt: step(opt), device, repeat)
            s = statistics.median(times)
            key = f"{name}{' + gradient checkpointing' if checkpointing else ''}"
            out[key] = {"s_per_step": round(s, 3), "it_s": round(1 / s, 2), "peak_vram_mb": peak_vram_mb(device)}
            del opt
    unet.disable_gradient_checkpointing()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (default where there is one), or cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="the demo model's shapes at 64², on the CPU")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        dtype = torch.float32
    placement = Placement(device, dtype, dtype)
    config_dir, size, steps = (DEMO_MODEL, 64, 4) if args.tiny else (SDXL_BASE_CONFIG, 1024, 30)

    t0 = time.perf_counter()
    pipe = build_random_sdxl(config_dir, device, dtype)
    sync(device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "model": "random-weight SDXL base" if not args.tiny else "random-weight demo model",
        "size": size,
        "steps": steps,
        "build_s": round(time.perf_counter() - t0, 1),
        "peak_host_rss_mb_while_building": round(rss_mb()),
        "unet_params_m": round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6, 1),
    }
    result["generation"] = bench_generation(pipe, placement, size, steps, args.repeat)
    result["training"] = bench_training(pipe, placement, size, args.repeat)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    if not args.tiny:
        result["anchor_a100_bf16_s_per_image"] = ANCHOR_A100_S_PER_IMAGE
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['device']} {result['dtype']}, {result['model']} ({result['unet_params_m']}M UNet parameters), "
        f"built in {result['build_s']} s, peak host RSS {result['peak_host_rss_mb_while_building']} MB"
    )
    for name, g in result["generation"].items():
        print(
            f"  generate {size}², {steps} steps, {name}: negalora {g['negalora_s_per_image']} s/image, "
            f"diffusers {g['diffusers_s_per_image']} s/image (ratio {g['ratio']}), peak VRAM {g['peak_vram_mb']} MB"
        )
    for name, t in result["training"].items():
        print(f"  train step {size}², batch 1, {name}: {t['s_per_step']} s/step ({t['it_s']} it/s), "
              f"peak VRAM {t['peak_vram_mb']} MB")  # fmt: skip
    if not args.tiny:
        print(f"  anchor: A100 bf16 {ANCHOR_A100_S_PER_IMAGE} s/image at 30 steps (diffusers' blog)")
    print(f"total {result['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
