import pytest
import torch

from negalora.device import choose_placement
from negalora.errors import NegaloraError


def test_cpu_is_fp32():
    p = choose_placement("cpu")
    assert p.device.type == "cpu" and p.dtype == torch.float32 and p.vae_dtype == torch.float32


def test_cuda_bf16_when_supported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    p = choose_placement()
    assert p.device.type == "cuda" and p.dtype == torch.bfloat16 and p.vae_dtype == torch.bfloat16


def test_fp16_keeps_the_vae_in_fp32_unless_fixed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    p = choose_placement()
    assert p.dtype == torch.float16 and p.vae_dtype == torch.float32
    assert choose_placement(fp16_fix_vae=True).vae_dtype == torch.float16


def test_unavailable_or_unknown_device_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(NegaloraError, match="not available"):
        choose_placement("cuda")
    with pytest.raises(NegaloraError, match="must be cpu, cuda or mps"):
        choose_placement("tpu")
    monkeypatch.setenv("NEGALORA_DEVICE", "cpu")
    assert choose_placement().device.type == "cpu"
