from collections import Counter

from negalora.wrong_set import DEFAULT_COUNT, GUIDANCES, KEYWORDS, wrong_set_requests


def test_woolfs_recipe_78_images_every_keyword_weighted():
    requests = wrong_set_requests(seed=10, steps=30)
    assert len(requests) == DEFAULT_COUNT == 78
    weighted = Counter()
    for k, r in enumerate(requests):
        (prompt,) = r.prompts
        assert prompt.count("++++") == 1
        assert all(kw in prompt for kw in KEYWORDS)
        weighted[prompt.split("(")[1].split(")")[0]] += 1
        assert r.guidance in GUIDANCES and r.seed == 10 + k and r.steps == 30
    assert set(weighted) == set(KEYWORDS)
    assert set(weighted.values()) <= {5, 6}
    assert {r.guidance for r in requests} == set(GUIDANCES)


def test_make_wrong_cli_marks_the_set_rejected(cli, home):
    r = cli("make-wrong", "--count", "3", "--steps", "2", "--home", home.root, "--json")
    assert r.code == 0, r.err
    ids = [m["id"] for m in r.json["rejected"]]
    assert len(ids) == 3
    listed = cli("list", "images", "--rating", "reject", "--home", home.root, "--json").json["images"]
    assert sorted(x["id"] for x in listed) == sorted(ids)
    assert all("++++" in x["prompt"] for x in listed)
