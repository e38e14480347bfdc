import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import files_under
from PIL import Image
from safetensors.torch import save_file

from negalora import __version__
from negalora.models.demo import DEMO_SIZE
from negalora.pngmeta import recipe_fields_from_parameters

ROOT = Path(__file__).resolve().parent.parent


def test_version_and_help_from_main_py():
    out = subprocess.run([sys.executable, str(ROOT / "main.py"), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"negalora {__version__}"
    out = subprocess.run([sys.executable, "-m", "negalora", "generate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--negative" in out.stdout and "--lora-scale" in out.stdout


def test_generate_json_lists_every_image_and_the_png_says_how(cli, home):
    r = cli(
        "generate",
        "a (red)++ circle",
        "a blue square",
        "--count",
        "2",
        "--seed",
        "100",
        "--steps",
        "4",
        "--negative",
        "wrong",
        "--home",
        home.root,
        "--json",
    )
    assert r.code == 0, r.err
    images = r.json["images"]
    assert len(images) == 4
    assert [im["seed"] for im in images] == [100, 101, 102, 103]
    for im in images:
        path = Path(im["path"])
        assert path.is_file() and path.parent.parent == home.images
        with Image.open(path) as png:
            fields = recipe_fields_from_parameters(png.text["parameters"])
            assert png.size == (DEMO_SIZE, DEMO_SIZE)
        assert fields["seed"] == im["seed"] and fields["prompt"] == im["prompt"] and fields["negative"] == "wrong"
        assert fields["steps"] == 4 and fields["model"] == "demo"
    listed = cli("list", "images", "--home", home.root, "--json").json["images"]
    assert sorted(x["id"] for x in listed) == sorted(im["id"] for im in images)


def test_same_recipe_and_seed_identical_pixels_in_two_fresh_homes(cli, tmp_path):
    outs = []
    for name in ("one", "two"):
        r = cli(
            "generate",
            "a red circle on a blue background",
            "--seed",
            "42",
            "--steps",
            "8",
            "--home",
            tmp_path / name,
            "--json",
        )
        assert r.code == 0, r.err
        outs.append(r.json["images"][0])
    assert outs[0]["sha256"] == outs[1]["sha256"]
    a = np.asarray(Image.open(outs[0]["path"]))
    b = np.asarray(Image.open(outs[1]["path"]))
    assert np.array_equal(a, b) and a.std() > 0


def test_regenerate_gives_identical_pixels(cli, home):
    first = cli(
        "generate",
        "a green square",
        "--seed",
        "5",
        "--steps",
        "4",
        "--scheduler",
        "Euler a",
        "--home",
        home.root,
        "--json",
    )
    image_id = first.json["images"][0]["id"]
    again = cli("regenerate", image_id, "--home", home.root, "--json")
    assert again.code == 0, again.err
    assert again.json["identical"] is True and again.json["id"] == image_id


def test_rate_and_list_filters(cli, home):
    ids = [
        im["id"]
        for im in cli(
            "generate", "a", "--count", "3", "--seed", "1", "--steps", "2", "--home", home.root, "--json"
        ).json["images"]
    ]
    assert cli("rate", ids[0], ids[1], "reject", "--reason", "hands", "--home", home.root).code == 0
    assert cli("rate", ids[2], "pick", "--home", home.root).code == 0
    rejects = cli("list", "images", "--rating", "reject", "--home", home.root, "--json").json["images"]
    assert sorted(r["id"] for r in rejects) == sorted(ids[:2])
    assert all(r["reasons"] == ["hands"] for r in rejects)
    assert cli("rate", ids[0], "clear", "--home", home.root).code == 0
    assert len(cli("list", "images", "--rating", "unrated", "--home", home.root, "--json").json["images"]) == 1
    models = cli("list", "models", "--home", home.root, "--json").json["models"]
    assert [m["name"] for m in models] == ["demo"]
    bad = cli("rate", "9999", "pick", "--home", home.root)
    assert bad.code == 2 and "image 9999" in bad.err


def test_import_cli_with_reject(cli, home, tmp_path):
    Image.new("RGB", (32, 32), "yellow").save(tmp_path / "x.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    r = cli("import", tmp_path / "x.png", tmp_path / "junk.png", "--reject", "--home", home.root, "--json")
    assert r.code == 0
    assert len(r.json["imported"]) == 1 and r.json["refused"][0]["path"].endswith("junk.png")
    assert "junk.png" in r.err
    only_bad = cli("import", tmp_path / "junk.png", "--home", home.root)
    assert only_bad.code == 2


# -- bad input: exit 2, one line that names the file, nothing written -----------------------


def _assert_refused(r, home, *needles):
    assert r.code == 2, (r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    for n in needles:
        assert str(n) in lines[0]
    assert files_under(home.root) == []


def test_missing_model_path(cli, home, tmp_path):
    missing = tmp_path / "nope" / "model.safetensors"
    _assert_refused(cli("generate", "a", "--model", missing, "--home", home.root), home, missing, "no such")


def test_sd15_checkpoint_is_refused(cli, home, tmp_path):
    sd15 = tmp_path / "v1-5.safetensors"
    save_file(
        {
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 2),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2),
            "first_stage_model.decoder.conv_in.weight": torch.zeros(2),
        },
        str(sd15),
    )
    _assert_refused(cli("generate", "a", "--model", sd15, "--home", home.root), home, sd15, "Stable Diffusion 1.x")


def test_sd2_checkpoint_and_lora_as_model_are_refused(cli, home, tmp_path):
    sd2 = tmp_path / "v2.safetensors"
    save_file({"cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(2)}, str(sd2))
    _assert_refused(cli("generate", "a", "--model", sd2, "--home", home.root), home, sd2, "2.x")
    lora = tmp_path / "wrong.safetensors"
    save_file({"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    _assert_refused(cli("generate", "a", "--model", lora, "--home", home.root), home, lora, "LoRA")


class _Tripwire:
    """Unpickling this object creates a marker file: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_is_never_unpickled(cli, home, tmp_path, suffix):
    marker = tmp_path / "UNPICKLED"
    ckpt = tmp_path / f"model{suffix}"
    ckpt.write_bytes(pickle.dumps(_Tripwire(marker)))
    _assert_refused(cli("generate", "a", "--model", ckpt, "--home", home.root), home, ckpt, "pickle")
    assert not marker.exists()
    pickle.loads(ckpt.read_bytes())  # the tripwire works, so its absence above means something
    assert marker.exists()


def test_truncated_safetensors(cli, home, tmp_path):
    full = tmp_path / "full.safetensors"
    save_file(
        {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(64, 64)}, str(full)
    )
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[:-100])
    _assert_refused(cli("generate", "a", "--model", cut, "--home", home.root), home, cut, "truncated")
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x01\x02")
    _assert_refused(cli("generate", "a", "--model", tiny, "--home", home.root), home, tiny, "truncated")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--size", "100x64"], "multiple of 8"),
        (["--size", "big"], "WxH"),
        (["--count", "0"], "count 0"),
        (["--count", "-3"], "count -3"),
        (["--scheduler", "warp"], "unknown scheduler"),
    ],
)
def test_bad_settings(cli, home, args, needle):
    _assert_refused(cli("generate", "a", *args, "--home", home.root), home, needle)


def test_model_folder_that_is_not_sdxl(cli, home, tmp_path):
    folder = tmp_path / "sd15-folder"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    _assert_refused(
        cli("generate", "a", "--model", folder, "--home", home.root), home, folder, "StableDiffusionPipeline"
    )


def test_usage_error_exits_2(cli):
    with pytest.raises(SystemExit) as info:
        cli("rate", "1", "maybe")
    assert info.value.code == 2


def test_top_level_home_applies_to_the_command(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("NEGALORA_HOME", str(tmp_path / "env-home"))
    Image.new("RGB", (8, 8), "red").save(tmp_path / "x.png")
    wanted = tmp_path / "wanted"
    assert cli("--home", wanted, "import", tmp_path / "x.png").code == 0
    assert (wanted / "negalora.db").exists() and not (tmp_path / "env-home").exists()


def test_a_folder_with_only_pickled_weights_is_bad_input(cli, home, tmp_path):
    from negalora.models.demo import ensure_demo_folder

    folder = ensure_demo_folder(tmp_path / "pickled")
    for f in folder.rglob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    r = cli("generate", "a", "--model", folder, "--home", home.root)
    assert r.code == 2 and str(folder) in r.err


def test_a_missing_lora_writes_nothing(cli, home, tmp_path):
    missing = tmp_path / "nope.safetensors"
    _assert_refused(cli("generate", "a", "--lora", missing, "--home", home.root), home, missing, "no such LoRA")
