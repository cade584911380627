"""Device choice and data-loader workers follow the machine."""

from __future__ import annotations

import pytest
import torch

from invseg.runtime.device import Amp, auto_workers, cpu_count, resolve_device


def test_auto_workers_leave_one_cpu_and_stop_at_four(monkeypatch) -> None:
    import invseg.runtime.device as device

    for cpus, workers in [(1, 0), (2, 1), (3, 2), (16, 4)]:
        monkeypatch.setattr(device, "cpu_count", lambda n=cpus: n)
        assert auto_workers("auto") == workers
    assert auto_workers(3) == 3 and cpu_count() >= 1


def test_unknown_device_has_did_you_mean() -> None:
    with pytest.raises(ValueError, match="Did you mean 'cpu'"):
        resolve_device("cpux")


def test_amp_is_bf16_on_cpu_and_off_when_disabled() -> None:
    with Amp(torch.device("cpu"), True)():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with Amp(torch.device("cpu"), False)():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    assert Amp(torch.device("cpu"), True).scaler is None
