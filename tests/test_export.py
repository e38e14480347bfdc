"""Exporting a run's LoRA on the demo model: both formats render like the in-app LoRA, the real alpha
is written, the header metadata and model card are honest, a failure or a SIGKILL never leaves a half
file, and the CLI reports it all."""

import base64
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers_export import seed_rejects, train
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from negalora.errors import NegaloraError
from negalora.export import ExportRequest, export_lora, exporter, plan_export, writer
from negalora.export.source import find_source
from negalora.export.verify import verify_export
from negalora.generate import GenerateRequest, Generator
from negalora.hashing import sha256_file
from negalora.home import Home
from negalora.models.demo import DEMO_SIZE

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 2  # of 255
PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_model):
    home = Home(tmp_path_factory.mktemp("export-home"))
    store = seed_rejects(home, 4)
    plain = train(home, store, demo_model)  # rank 4, alpha = rank, UNet only
    te = train(home, store, demo_model, train_text_encoder=True, alpha=1.0)  # rank 4, alpha 1, both text encoders
    yield SimpleNamespace(home=home, store=store, plain=plain, te=te)
    store.close()


def _export(runs, model, run_id, fmt, **kw):
    generator = Generator(model) if kw.get("verify", True) else None
    return export_lora(runs.store, ExportRequest(run_id, fmt, **kw), generator=generator)


def _render(model, lora, scale=0.7, seed=7):
    """The app's own path: a Generator given the LoRA file, as the Generate page uses it."""
    gen = Generator(model)
    recipe = gen.plan(
        GenerateRequest(prompts=(PROMPT,), negative="wrong", seed=seed, steps=4, lora=lora, lora_scale=scale)
    )[0]
    try:
        return np.asarray(gen.render(recipe), dtype=np.int16)
    finally:
        gen.release_lora()


@pytest.mark.parametrize("run, fmt", [("te", "kohya"), ("te", "diffusers"), ("plain", "kohya")])
def test_the_export_renders_like_the_in_app_lora(runs, demo_model, run, fmt):
    run_id = getattr(runs, run)
    result = _export(runs, demo_model, run_id, fmt)
    v = result.verification
    assert v["verified"] and v["modules_loaded"] == v["modules_in_file"] > 0
    assert v["max_pixel_diff"] <= TOLERANCE and v["max_weight_diff"] <= 1e-6
    # Independently of the export's own check: the app renders the file like the checkpoint, at another scale.
    checkpoint = runs.store.checkpoints(run_id)[-1]["path"]
    base, app, exported = _render(demo_model, None), _render(demo_model, checkpoint), _render(demo_model, result.path)
    assert np.abs(app - base).max() > 4 * TOLERANCE  # the LoRA shows, so the comparison means something
    assert np.abs(exported - app).max() <= TOLERANCE
    assert not getattr(demo_model.pipe.unet, "peft_config", None)  # every LoRA is off the shared pipeline again


def test_kohya_keys_are_triples_with_the_real_alpha_and_text_encoder_parts(runs, tmp_path):
    from diffusers.utils import convert_state_dict_to_kohya

    result = export_lora(runs.store, ExportRequest(runs.te, "kohya", out=str(tmp_path / "k.safetensors"), verify=False))
    tensors = load_file(result.path)
    modules: dict[str, set] = {}
    for key in tensors:
        module, _, part = key.partition(".")
        modules.setdefault(module, set()).add(part)
    assert all(m.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for m in modules)
    assert all(parts == {"lora_down.weight", "lora_up.weight", "alpha"} for parts in modules.values())
    assert {m.split("_")[1] for m in modules} == {"unet", "te1", "te2"}
    assert {tensors[f"{m}.alpha"].item() for m in modules} == {1.0}  # trained alpha 1, not the rank
    assert {tensors[f"{m}.lora_down.weight"].shape[0] for m in modules} == {4}
    checkpoint = load_file(find_source(runs.store, runs.te).path)
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"
    assert torch.equal(
        tensors[f"lora_unet_{name.replace('.', '_')}.lora_up.weight"], checkpoint[f"unet.{name}.lora.up.weight"]
    )
    # diffusers' own converter names the UNet modules the same way, but writes alpha = rank
    peft = {
        k.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v
        for k, v in checkpoint.items()
        if k.startswith("unet.")
    }
    theirs = convert_state_dict_to_kohya(peft)
    assert {k for k in theirs} == {k for k in tensors if k.startswith("lora_unet_")}
    assert {float(v) for k, v in theirs.items() if k.endswith(".alpha")} == {4.0}


def test_a_file_with_alpha_equal_to_rank_fails_the_check(runs, demo_model, tmp_path):
    """What diffusers' convert_state_dict_to_kohya would write for this run: the check refuses it."""
    good = export_lora(runs.store, ExportRequest(runs.te, "kohya", out=str(tmp_path / "a.safetensors"), verify=False))
    tensors = load_file(good.path)
    bad = {k: (torch.tensor(4.0) if k.endswith(".alpha") else v) for k, v in tensors.items()}
    save_file(bad, tmp_path / "bad.safetensors")
    source = find_source(runs.store, runs.te)
    with pytest.raises(NegaloraError, match="weights or scales differ"):
        verify_export(Generator(demo_model), source, tmp_path / "bad.safetensors", len(tensors) // 3)
    assert not getattr(demo_model.pipe.unet, "peft_config", None)  # the check took its LoRAs off again


def test_header_metadata_model_card_and_grid(runs, demo_model, tmp_path):
    grid = runs.home.root / "comparisons" / "grid.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (600, 400), "orange").save(grid)
    comparison = runs.store.create_comparison("three_way", [], {}, run_id=runs.te, step=4)
    runs.store.finish_comparison(comparison, "done", grid)
    request = ExportRequest(runs.te, "kohya", out=str(tmp_path / "w.safetensors"))
    preview = plan_export(runs.store, request).metadata
    result = export_lora(runs.store, request, generator=Generator(demo_model))
    with safe_open(result.path, framework="pt") as fh:
        meta = fh.metadata()
    assert meta == preview == result.metadata  # the preview is exactly what was written
    assert all(isinstance(v, str) for v in meta.values())
    expected = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "4",
        "ss_network_alpha": "1",
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_output_name": "w",
        "ss_num_train_images": "4",
        "ss_resolution": f"({DEMO_SIZE}, {DEMO_SIZE})",
        "ss_seed": "3",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": "w",
        "modelspec.trigger_phrase": "wrong",
        "modelspec.usage_hint": "add `wrong` to the negative prompt",
        "modelspec.resolution": f"{DEMO_SIZE}x{DEMO_SIZE}",
        "modelspec.date": runs.store.checkpoints(runs.te)[-1]["created"],
        "negalora.run": runs.te,
        "negalora.step": "4",
        "negalora.base_model_hash": demo_model.sha256,
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert json.loads(meta["ss_tag_frequency"]) == {"rejects": {"wrong": 4}}
    # the hashes cover what they say
    data_hash = sha256_file(Path(result.path), skip_safetensors_header=True)
    assert meta["sshs_model_hash"] == data_hash and meta["modelspec.hash_sha256"] == "0x" + data_hash
    kohya_blob = save(load_file(result.path), {k: v for k, v in meta.items() if k.startswith("ss_")})
    assert meta["sshs_legacy_hash"] == hashlib.sha256(kohya_blob[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    assert result.sha256 == sha256_file(Path(result.path))
    thumb = meta["modelspec.thumbnail"]
    assert thumb.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(thumb.split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and max(im.size) <= 256
    # recorded, with the grid and the model card beside the file
    row = runs.store.exports(runs.te)[-1]
    assert (row["path"], row["sha256"], row["format"], row["step"]) == (result.path, result.sha256, "kohya", 4)
    assert row["metadata"] == meta
    assert Path(result.grid).name == "w.preview.png" and Path(result.grid).read_bytes() == grid.read_bytes()
    card = Path(result.model_card).read_text(encoding="utf-8")
    assert Path(result.model_card).name == "w.md"
    for text in (
        "4 rejected images",
        "| Rank / alpha | 4 / 1 (scale 0.25) |",
        "<lora:w:1>",
        "*Negative prompt*",
        "Create Hook LoRA",
        "Set CLIP Hooks",
        "`w.comfyui.json`",
        f'pipe.load_lora_weights("{tmp_path}", weight_name="w.safetensors")',
        "with negative_pass(pipe):",
        'negative_prompt="wrong"',
        "![The run's latest comparison](w.preview.png)",
        f"differed from the app's render of the checkpoint by at most {result.verification['max_pixel_diff']}/255",
        result.sha256,
    ):
        assert text in card, text


@pytest.mark.parametrize("stage", ["write", "read_back", "verify", "replace"])
def test_a_failed_export_leaves_the_old_file_and_no_temp(runs, demo_model, tmp_path, monkeypatch, stage):
    out = tmp_path / "lora.safetensors"
    export_lora(runs.store, ExportRequest(runs.plain, "kohya", step=2, out=str(out), verify=False))
    old, before = out.read_bytes(), len(runs.store.exports())

    def fail(*args, **kwargs):
        raise OSError(28, f"injected failure at {stage}")

    if stage == "write":
        monkeypatch.setattr(os, "fsync", fail)
    elif stage == "read_back":
        monkeypatch.setattr(exporter, "_read_back", fail)
    elif stage == "verify":
        monkeypatch.setattr("negalora.export.verify.verify_export", fail)
    else:
        monkeypatch.setattr(writer.os, "replace", fail)
    request = ExportRequest(runs.plain, "kohya", step=4, out=str(out), verify=stage == "verify")
    with pytest.raises((OSError, NegaloraError), match="injected failure|disk full"):  # errno 28 is ENOSPC
        export_lora(runs.store, request, generator=Generator(demo_model) if request.verify else None)
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lora.comfyui-api.json",
        "lora.comfyui.json",
        "lora.md",
        "lora.safetensors",
    ]  # no temp left
    assert len(runs.store.exports()) == before


def test_sigkill_during_an_export_leaves_the_old_file_and_the_next_export_cleans_up(runs, tmp_path):
    out = tmp_path / "killed.safetensors"
    export_lora(runs.store, ExportRequest(runs.te, "kohya", step=2, out=str(out), verify=False))
    old, before = out.read_bytes(), len(runs.store.exports(runs.te))
    stale = tmp_path / ".other.safetensors.4194999-0123abcd.tmp"  # a temp from a process long gone
    stale.write_bytes(b"half")
    cmd = [sys.executable, str(ROOT / "main.py"), "export", runs.te, "--format", "kohya", "--step", "4"]
    cmd += ["--out", str(out), "--home", str(runs.home.root), "--device", "cpu", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, temp = time.monotonic() + 180, None
    while time.monotonic() < deadline and proc.poll() is None and temp is None:
        temp = next((p for p in tmp_path.glob(".killed.safetensors.*.tmp")), None)
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert temp is not None, proc.stderr.read().decode()[-2000:]  # killed while the new file was being checked
    assert not stale.exists()  # the killed export already cleaned the dead process's temp
    if out.read_bytes() != old:  # the kill came after the replace: then the new file is whole
        with safe_open(str(out), framework="pt") as fh:
            assert fh.metadata()["sshs_model_hash"] == sha256_file(out, skip_safetensors_header=True)
    else:
        assert len(runs.store.exports(runs.te)) == before  # nothing recorded for the killed export
    # the next export removes the killed one's temp and records only itself
    result = export_lora(runs.store, ExportRequest(runs.te, "kohya", step=4, out=str(out), verify=False))
    assert not list(tmp_path.glob(".*"))
    assert runs.store.exports(runs.te)[-1]["path"] == result.path == str(out)


def test_cli_export_json_reports_the_file_hashes_and_the_check(cli, runs):
    runs.store.set_best_step(runs.te, 2)
    try:
        r = cli("export", runs.te, "--format", "diffusers", "--home", runs.home.root, "--json")
    finally:
        runs.store.set_best_step(runs.te, None)
    assert r.code == 0, r.err
    out = r.json
    assert (out["run"], out["step"], out["format"]) == (runs.te, 2, "diffusers")  # the best step by default
    path = Path(out["path"])
    assert path == runs.home.exports / f"wrong-{runs.te}-step2" / "pytorch_lora_weights.safetensors"
    assert out["sha256"] == sha256_file(path) and out["bytes"] == path.stat().st_size
    assert Path(out["model_card"]) == path.parent / "README.md" and Path(out["model_card"]).is_file()
    assert out["metadata"]["lora_adapter_metadata"] and out["metadata"]["modelspec.implementation"] == "diffusers"
    assert out["hashes"]["sshs_model_hash"]["value"] == sha256_file(path, skip_safetensors_header=True)
    assert "tensor data" in out["hashes"]["sshs_model_hash"]["covers"]
    v = out["verification"]
    suffix = r"\.(lora(_linear_layer)?[._](A|B|down|up)\.weight|alpha)$"
    modules = {re.sub(suffix, "", k) for k in load_file(path)}
    assert v["verified"] and v["modules_loaded"] == v["modules_in_file"] == len(modules) > 0
    assert v["max_pixel_diff"] <= TOLERANCE


def test_cli_export_bad_input_exits_2_with_one_line_and_writes_nothing(cli, runs, tmp_path):
    exports_before = len(runs.store.exports())
    for args, message in [
        (("nope",), "run nope: no such training run"),
        ((runs.te, "--step", "3"), "no checkpoint at step 3 (kept: 2, 4)"),
        ((runs.te, "--out", str(tmp_path / "x.txt")), "must be a .safetensors file"),
        ((runs.te, "--name", ".hidden"), "export name '.hidden'"),
    ]:
        out = () if "--out" in args else ("--out", tmp_path)
        r = cli("export", *args, *out, "--format", "kohya", "--home", runs.home.root)
        assert r.code == 2 and message in r.err, (args, r.err)
        assert len(r.err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir()) and len(runs.store.exports()) == exports_before


def test_a_checkpoint_holding_nan_is_refused_and_nothing_is_written(runs, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    good = Path(runs.store.checkpoints(runs.plain)[-1]["path"])
    with safe_open(str(good), framework="pt") as fh:
        header, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    bad = good.with_name("step-000001.safetensors")  # below the others: the run's last checkpoint stays the same
    save_file(tensors, str(bad), metadata=header)
    runs.store.add_checkpoint(runs.plain, 1, bad, sha256_file(bad))
    out = tmp_path / "nan.safetensors"
    before = len(runs.store.exports())
    with pytest.raises(NegaloraError, match=f"tensor {key} holds NaN or inf"):
        export_lora(runs.store, ExportRequest(runs.plain, "kohya", step=1, out=str(out), verify=False))
    assert list(tmp_path.iterdir()) == [] and len(runs.store.exports()) == before


def test_disk_full_during_an_export_is_one_clear_message_and_keeps_the_old_file(runs, tmp_path):
    from negalora import faults
    from negalora.errors import DiskFull

    out = tmp_path / "full.safetensors"
    export_lora(runs.store, ExportRequest(runs.plain, "kohya", step=2, out=str(out), verify=False))
    old, before = out.read_bytes(), len(runs.store.exports())
    faults.configure("export_write=enospc")
    try:
        with pytest.raises(DiskFull, match=r"full\.safetensors: disk full \(\d+ MB free\)"):
            export_lora(runs.store, ExportRequest(runs.plain, "kohya", step=4, out=str(out), verify=False))
    finally:
        faults.configure("")
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "full.comfyui-api.json",
        "full.comfyui.json",
        "full.md",
        "full.safetensors",
    ]
    assert len(runs.store.exports()) == before
