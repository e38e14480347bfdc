"""Seconds per training step: negalora's trainer against a reference loop that does per step what
diffusers' ``train_dreambooth_lora_sdxl.py`` does (VAE-encode every batch, text embeddings
precomputed). Same demo model, images, batch, resolution (the demo model's native size), rank and
optimizer, in one run. Target: negalora <= 0.8x the reference's time per step. Also prints the
peak RSS.

Caching saves only the reference's VAE encode, a small part of a step at the demo's size; the rest is
the UNet's forward and backward, which both loops do alike. negalora's ``--compile`` (torch.compile,
like kohya's ``--torch_compile``) makes that part faster after a one-time compile, so the target is
measured with it (and the plain run is printed beside it); the steps timed are those after the compile.

    python benchmarks/bench_train.py [--steps 40] [--batch 4] [--compile inductor|none] [--json]
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from negalora.device import choose_placement  # noqa: E402
from negalora.home import Home  # noqa: E402
from negalora.models.demo import DEMO_SIZE  # noqa: E402
from negalora.models.loader import load_model  # noqa: E402
from negalora.store import Store  # noqa: E402
from negalora.train.buckets import prepare  # noqa: E402
from negalora.train.config import TrainConfig  # noqa: E402
from negalora.train.lora import add_lora  # noqa: E402
from negalora.train.trainer import Trainer  # noqa: E402

TARGET = 0.8
COLORS = ["red", "green", "blue", "yellow", "white", "orange", "purple", "cyan"]


def make_rejects(home: Home, n: int, size: int) -> list[Path]:
    store = Store(home)
    paths, ids = [], []
    for i in range(n):
        im = Image.new("RGB", (size, size), COLORS[(i + 3) % 8])
        ImageDraw.Draw(im).rectangle((size // 8 + i, size // 6, size * 5 // 8, size * 3 // 4), fill=COLORS[i % 8])
        path = home.root / f"reject{i}.png"
        im.save(path)
        paths.append(path)
        ids.append(store.add_imported(path.read_bytes(), ".png", size, size, path.name).id)
    store.rate(ids, "reject")
    store.close()
    return paths


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_negalora(home: Home, config: TrainConfig) -> tuple[list[float], float]:
    """Seconds between steps, and the seconds until the first step ended (a compile happens there)."""
    store = Store(home)
    model = load_model("demo", home, choose_placement("cpu"))
    stamps = []
    t0 = time.perf_counter()
    Trainer(
        home, store, model, on_event=lambda e: stamps.append(time.perf_counter()) if e["type"] == "train_step" else None
    ).start(config)
    store.close()
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)], stamps[0] - t0


def time_reference(home: Home, paths: list[Path], config: TrainConfig) -> tuple[list[float], list[float]]:
    """diffusers' DreamBooth SDXL LoRA step: encode the batch with the VAE every step. Returns the
    step times and, of each, the time the VAE encode took."""
    from diffusers import DDPMScheduler

    model = load_model("demo", home, choose_placement("cpu"))
    pipe = model.pipe
    unet, vae = pipe.unet, pipe.vae
    size = (config.resolution, config.resolution)
    pixels = torch.stack([prepare(Image.open(p).convert("RGB"), size).pixels for p in paths])
    time_ids = torch.stack([prepare(Image.open(p).convert("RGB"), size).time_ids() for p in paths])
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(config.token, device="cpu", do_classifier_free_guidance=False)
    torch.manual_seed(config.seed)
    params = add_lora(unet, config)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    unet.train()
    g = torch.Generator().manual_seed(0)
    times, encodes = [], []
    for _ in range(config.steps):
        t0 = time.perf_counter()
        idx = torch.randint(len(paths), (config.batch,), generator=g)
        with torch.no_grad():
            latents = vae.encode(pixels[idx]).latent_dist.sample() * vae.config.scaling_factor
        encodes.append(time.perf_counter() - t0)
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (config.batch,), generator=g)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        pred = unet(
            noisy,
            timesteps,
            embeds.repeat(config.batch, 1, 1),
            added_cond_kwargs={"time_ids": time_ids[idx], "text_embeds": pooled.repeat(config.batch, 1)},
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times, encodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=DEMO_SIZE, help=f"pixels (default {DEMO_SIZE}, native)")
    parser.add_argument(
        "--compile",
        default="inductor",
        metavar="BACKEND",
        help="negalora's --compile for the compiled run (default inductor); 'none' runs only the plain one",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = TrainConfig(
        steps=args.steps,
        batch=args.batch,
        lr=1e-4,
        rank=4,
        checkpoint_every=args.steps,
        keep_last=0,
        validation_steps=0,
        seed=0,
        resolution=args.resolution,
    )
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp))
        home.root.mkdir(parents=True, exist_ok=True)
        paths = make_rejects(home, args.images, args.resolution)
        plain, _ = time_negalora(home, config)
        compiled, first_step = [], 0.0
        if args.compile != "none":
            compiled, first_step = time_negalora(home, replace(config, compile=args.compile))
        rss_ours = peak_rss_mb()
        ref, encodes = time_reference(home, paths, config)
        rss_all = peak_rss_mb()
    skip = 3  # first steps pay one-time costs (a compile, a recompile for the last bucket's batch)
    plain_s = statistics.median(plain[skip:])
    ours_s = statistics.median(compiled[skip:]) if compiled else plain_s
    ref_s = statistics.median(ref[skip:])
    ratio = ours_s / ref_s
    # Caching saves the VAE encode and nothing else (the UNet work is the same), so this is the best
    # ratio any trainer can reach here.
    encode_s = statistics.median(encodes[skip:])
    best = 1 - encode_s / ref_s
    result = {
        "steps": args.steps,
        "batch": args.batch,
        "resolution": args.resolution,
        "reference_vae_encode_s": encode_s,
        "best_possible_ratio": best,
        "negalora_s_per_step": ours_s,
        "negalora_compile": args.compile,
        "negalora_first_step_s": first_step,
        "negalora_plain_s_per_step": plain_s,
        "plain_ratio": plain_s / ref_s,
        "reference_s_per_step": ref_s,
        "ratio": ratio,
        "target": TARGET,
        "peak_rss_mb_after_negalora": round(rss_ours),
        "peak_rss_mb_after_both": round(rss_all),
        "ok": ratio <= TARGET,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"demo model, {args.resolution} px, batch {args.batch}, rank 4, {args.steps} steps (median after {skip})\n"
            f"reference (VAE encode every step):      {ref_s * 1000:.1f} ms/step\n"
            f"negalora (cached latents):              {plain_s * 1000:.1f} ms/step, ratio {plain_s / ref_s:.2f}\n"
            + (
                f"negalora --compile {args.compile} (cached latents): {ours_s * 1000:.1f} ms/step, ratio {ratio:.2f}; "
                f"its first step took {first_step:.0f} s (the compile)\n"
                if compiled
                else ""
            )
            + f"ratio {ratio:.2f} (target <= {TARGET}) {'OK' if result['ok'] else 'OVER TARGET'}\n"
            f"the reference's VAE encode: {encode_s * 1000:.1f} ms/step, so caching alone cannot do better than "
            f"{best:.2f}\n"
            f"peak RSS: {rss_ours:.0f} MB after negalora's run, {rss_all:.0f} MB after both"
        )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
