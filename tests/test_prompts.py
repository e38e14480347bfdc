import pytest
import torch

from negalora.errors import BadPrompt
from negalora.prompts import check_prompt


def test_weighting_changes_conditioning(generator):
    plain = generator._conditioner.encode("a red circle")
    weighted = generator._conditioner.encode("a (red)++ circle")
    lowered = generator._conditioner.encode("a (red)1.3 circle")
    assert plain.embeds.shape == weighted.embeds.shape
    assert not torch.allclose(plain.embeds, weighted.embeds)
    assert not torch.allclose(weighted.embeds, lowered.embeds)


def test_plain_prompt_matches_the_pipelines_own_encoding(generator):
    pipe = generator.model.pipe
    cond = generator._conditioner.encode("a red circle", "wrong")
    ref = pipe.encode_prompt("a red circle", negative_prompt="wrong", device="cpu", do_classifier_free_guidance=True)
    for ours, theirs in zip((cond.embeds, cond.negative_embeds, cond.pooled, cond.negative_pooled), ref, strict=True):
        assert torch.equal(ours, theirs)


def test_blend_and_and_parse(generator):
    blend = generator._conditioner.encode('("a red circle", "a blue square").blend(0.7, 0.3)')
    conj = generator._conditioner.encode('("a red circle", "on a green background").and()')
    assert blend.embeds.shape[-1] == conj.embeds.shape[-1]
    assert conj.embeds.shape[1] == 2 * 77  # .and() concatenates two 77-token chunks
    assert not torch.allclose(blend.embeds, generator._conditioner.encode("a red circle").embeds)


def test_negative_padded_to_positive_length_and_long_prompts_not_truncated(generator):
    long_prompt = ", ".join(f"word{i}" for i in range(60))  # far beyond 77 tokens
    cond = generator._conditioner.encode(long_prompt, "wrong")
    assert cond.embeds.shape[1] > 77
    assert cond.negative_embeds.shape == cond.embeds.shape
    # the tail past token 77 still matters
    other = generator._conditioner.encode(long_prompt + ", purple", "wrong")
    assert not torch.allclose(cond.embeds, other.embeds)


def test_empty_negative_is_zeros_like_the_sdxl_pipeline(generator):
    cond = generator._conditioner.encode("a red circle", "")
    assert torch.count_nonzero(cond.negative_embeds) == 0
    assert torch.count_nonzero(cond.negative_pooled) == 0


@pytest.mark.parametrize(
    "prompt,column,reason",
    [
        ("a (red circle", 3, "unclosed '('"),
        ("a red) circle", 6, "unmatched ')'"),
        ('("a", "b").blend(0.5)', 11, "1 weights for 2 prompts"),
        ('a "red circle', 3, "unclosed"),
        ("a (red] circle", 7, "closes '('"),
    ],
)
def test_malformed_prompts_say_where(prompt, column, reason):
    with pytest.raises(BadPrompt) as info:
        check_prompt(prompt)
    assert info.value.column + 1 == column
    assert reason in str(info.value)
    assert info.value.pointer().splitlines()[1].index("^") == column - 1


def test_escaped_brackets_are_text():
    check_prompt(r"a \(red circle")


def test_malformed_prompt_exits_2(cli, home):
    r = cli("generate", "a (red circle", "--home", home.root)
    assert r.code == 2
    assert "unclosed '('" in r.err and "column 3" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not home.root.exists()


def test_the_conditioning_cache_keeps_the_recently_used_within_its_byte_budget(generator, monkeypatch):
    from negalora.prompts import Conditioner

    cond = Conditioner(generator.model.pipe)
    calls = []
    real = cond._compel.__call__
    monkeypatch.setattr(cond, "_compel", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = cond.encode("a red circle", "wrong")
    one = first.nbytes
    cond._cache_bytes = 2 * one  # room for two prompt pairs
    assert cond.encode("a red circle", "wrong") is first and len(calls) == 1  # a hit encodes nothing
    cond.encode("a blue square", "wrong")
    assert cond.encode("a red circle", "wrong") is first  # used again: now the newest
    cond.encode("a green triangle", "wrong")  # over budget: the least recently used one goes
    assert cond.cached == 2 and len(calls) == 3
    assert cond.encode("a red circle", "wrong") is first and len(calls) == 3
    again = cond.encode("a blue square", "wrong")
    assert len(calls) == 4 and torch.equal(again.embeds, cond.encode("a blue square", "wrong").embeds)
    cond.clear()
    assert cond.cached == 0 and cond.encode("a red circle", "wrong") is not first and len(calls) == 5
