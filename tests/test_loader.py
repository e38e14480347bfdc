import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from negalora.device import choose_placement
from negalora.errors import NegaloraError
from negalora.generate import GenerateRequest, Generator
from negalora.models.demo import DEMO_SIZE, build_demo_pipeline, build_demo_refiner, ensure_demo_folder
from negalora.models.loader import load_model


def test_demo_folder_is_a_standard_diffusers_folder(tmp_path):
    folder = ensure_demo_folder(tmp_path / "demo")
    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert type(pipe.vae).__name__ == "AutoencoderKL"
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # real CLIP BPE
    assert pipe.tokenizer_2.pad_token == "!"


def test_demo_is_built_deterministically():
    a, b = build_demo_pipeline(), build_demo_pipeline()
    for (na, pa), (nb, pb) in zip(a.unet.state_dict().items(), b.unet.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)


def test_a_diffusers_folder_loads_and_matches_demo(demo_model, home, tmp_path):
    folder = ensure_demo_folder(tmp_path / "my-sdxl")
    loaded = load_model(str(folder), home, choose_placement("cpu"))
    assert loaded.source == "folder" and loaded.name == "my-sdxl" and loaded.native_size == DEMO_SIZE
    assert loaded.sha256 == demo_model.sha256  # same weights, same identity


def test_unreachable_hub_id(home):
    with pytest.raises(NegaloraError, match="model hub cannot provide it"):
        load_model("stabilityai/not-a-real-model", home, choose_placement("cpu"))


def test_refiner_handoff(demo_model, home, tmp_path):
    ref_dir = tmp_path / "refiner"
    build_demo_refiner(demo_model.pipe).save_pretrained(ref_dir, safe_serialization=True)
    base_dir = ensure_demo_folder(tmp_path / "base")
    loaded = load_model(str(base_dir), home, choose_placement("cpu"), refiner=str(ref_dir))
    gen = Generator(loaded)
    with_ref = gen.plan(GenerateRequest(prompts=("a red circle",), seed=4, steps=10))[0]
    assert with_ref.refiner == "refiner" and with_ref.refiner_switch == 0.8
    without = gen.plan(GenerateRequest(prompts=("a red circle",), seed=4, steps=10, use_refiner=False))[0]
    steps = []
    a = np.asarray(gen.render(with_ref, on_step=steps.append), dtype=np.int16)
    b = np.asarray(gen.render(without), dtype=np.int16)
    assert np.abs(a - b).max() > 0
    assert steps[-1] == 10  # base 8 steps + refiner 2 steps
    with pytest.raises(NegaloraError, match="SDXL base model, not a refiner|no such refiner"):
        load_model("demo", home, choose_placement("cpu"), refiner=str(tmp_path / "missing.safetensors"))


def test_a_separate_vae_is_used(demo_model, home, tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_config(demo_model.pipe.vae.config)
    vae.load_state_dict(demo_model.pipe.vae.state_dict())
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.5)  # a visibly brighter decoder
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    with_vae = load_model("demo", home, choose_placement("cpu"), vae=str(tmp_path / "vae"))
    req = GenerateRequest(prompts=("a red circle",), seed=3, steps=4)
    brighter = np.asarray(Generator(with_vae).render(Generator(with_vae).plan(req)[0]), dtype=np.float32)
    base_gen = Generator(demo_model)
    normal = np.asarray(base_gen.render(base_gen.plan(req)[0]), dtype=np.float32)
    assert brighter.mean() > normal.mean() + 20
    with pytest.raises(NegaloraError, match="no such VAE"):
        load_model("demo", home, choose_placement("cpu"), vae=str(tmp_path / "missing"))


def test_a_recipe_with_a_vae_and_a_refiner_records_both_and_regenerates_exactly(demo_model, home, tmp_path):
    from diffusers import AutoencoderKL

    from negalora.generate import regenerate
    from negalora.recipe import Recipe

    vae = AutoencoderKL.from_config(demo_model.pipe.vae.config)
    vae.load_state_dict(demo_model.pipe.vae.state_dict())
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.5)
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    ref_dir = tmp_path / "refiner"
    build_demo_refiner(demo_model.pipe).save_pretrained(ref_dir, safe_serialization=True)
    base_dir = ensure_demo_folder(tmp_path / "base")
    loaded = load_model(str(base_dir), home, choose_placement("cpu"), vae=str(tmp_path / "vae"), refiner=str(ref_dir))
    gen = Generator(loaded)
    recipe = gen.plan(GenerateRequest(prompts=("a red circle",), seed=4, steps=6))[0]
    assert recipe.refiner == "refiner" and recipe.vae_hash == loaded.vae_sha256 and recipe.vae
    again = Recipe.from_json(recipe.to_json())  # as stored
    assert again.vae_hash == loaded.vae_sha256 and again.refiner_hash == loaded.refiner_sha256
    first = np.asarray(gen.render(recipe), dtype=np.int16)
    assert np.array_equal(np.asarray(regenerate(gen, again), dtype=np.int16), first)
    # the same recipe without its VAE is refused, not silently rendered without it
    plain = Generator(load_model(str(base_dir), home, choose_placement("cpu"), refiner=str(ref_dir)))
    with pytest.raises(NegaloraError, match="VAE"):
        regenerate(plain, again)
