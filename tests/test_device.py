import torch

from helpers.device import pick_device


def test_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")


def test_an_explicit_choice_wins(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cpu") == torch.device("cpu")


def test_the_device_works_for_tensors():
    x = torch.ones(2, device=pick_device())
    assert x.sum().item() == 2


def test_amp_dtype_prefers_bfloat16_and_falls_back_to_float16(monkeypatch):
    from helpers.device import amp_dtype

    assert amp_dtype(torch.device("cpu")) == torch.bfloat16
    assert amp_dtype(torch.device("mps")) == torch.float16
    # a T4 (Colab) emulates bfloat16: supported only when emulation counts, and float16 is the answer
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert amp_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp_dtype(torch.device("cuda")) == torch.bfloat16
