"""Where a run trains: the device a setting names, and the process group that device needs."""

from __future__ import annotations

import pytest
import torch

from mops.multitask.training.devices import process_group_backend, resolve_device


def test_auto_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_a_gpu_asked_for_on_a_machine_without_one_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda' asked for, but no CUDA GPU is available"):
        resolve_device("cuda")


def test_the_process_group_follows_the_device_the_run_trains_on(monkeypatch):
    """`--device cpu` on a machine with GPUs reduces over gloo: NCCL cannot reduce CPU tensors."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [process_group_backend(name) for name in ("auto", "cuda", "cpu")] == ["nccl", "nccl", "gloo"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_group_backend("auto") == "gloo"
