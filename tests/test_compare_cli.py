"""`negalora compare`, `mark-best` and `list comparisons|votes` on the command line."""

import json
from pathlib import Path

from helpers_lora import write_demo_lora
from PIL import Image


def test_compare_json_lists_every_cell_and_writes_the_grid(cli, home, demo_model, tmp_path):
    lora = write_demo_lora(demo_model.pipe, tmp_path / "wrong.safetensors")
    out = tmp_path / "grid.png"
    r = cli("compare", "a red circle", "a cat", "--lora", lora, "--count", "2", "--steps", "2", "--out", out,
            "--home", home.root, "--json")  # fmt: skip
    assert r.code == 0, r.err
    data = r.json
    assert [c["key"] for c in data["columns"]] == ["base", "negative", "lora", "lora_both"]
    assert len(data["cells"]) == 2 * 2 * 4
    assert all(Path(c["path"]).is_file() for c in data["cells"])
    for row in range(4):
        seeds = {c["seed"] for c in data["cells"] if c["row"] == row}
        assert len(seeds) == 1
    assert out.read_bytes() == Path(data["grid"]).read_bytes()
    assert "negalora_comparison" in Image.open(out).text
    listed = cli("list", "comparisons", "--home", home.root, "--json").json["comparisons"]
    assert [c["id"] for c in listed] == [data["comparison"]]


def test_compare_scale_sweep_and_bad_input(cli, home, demo_model, tmp_path):
    lora = write_demo_lora(demo_model.pipe, tmp_path / "w.safetensors")
    r = cli("compare", "a", "--lora", lora, "--scales", "0,1", "--count", "1", "--steps", "2", "--home", home.root,
            "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert [c["key"] for c in r.json["columns"]] == ["scale:0", "scale:1"]
    bad = cli("compare", "a", "--lora", tmp_path / "none.safetensors", "--home", home.root)
    assert bad.code == 2 and "no such LoRA file" in bad.err
    bad = cli("compare", "a", "--lora", lora, "--scales", "0,x", "--home", home.root)
    assert bad.code == 2 and "--scales" in bad.err
    bad = cli("compare", "--lora", lora, "--home", home.root)
    assert bad.code == 2 and "prompts" in bad.err


def test_mark_best_and_vote_results(cli, home):
    from negalora.store import Store

    store = Store(home)
    store.create_run("r1", None, json.dumps({"steps": 10}), 3)
    path = home.runs / "r1" / "step-000010.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    store.add_checkpoint("r1", 10, path, "0" * 64)
    a = store.add_imported(b"a" * 10, ".png", 1, 1, "a.png").id
    b = store.add_imported(b"b" * 10, ".png", 1, 1, "b.png").id
    store.add_vote("LoRA + negative", a, "negative", b, True, "left", run_id="r1", step=10)
    store.close()
    assert cli("mark-best", "r1", "10", "--home", home.root).code == 0
    assert cli("list", "runs", "--home", home.root, "--json").json["runs"][0]["best_step"] == 10
    bad = cli("mark-best", "r1", "11", "--home", home.root)
    assert bad.code == 2 and "no checkpoint at step 11" in bad.err
    votes = cli("list", "votes", "--home", home.root, "--json").json["votes"]
    assert votes[0]["wins"] == 1 and votes[0]["n"] == 1 and votes[0]["step"] == 10
