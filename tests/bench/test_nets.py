from __future__ import annotations

import pytest
import torch

from invseg.bench import nets as bench_nets


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the benchmark's networks so one run takes seconds."""
    monkeypatch.setattr(bench_nets, "CHANNELS", (8, 16))
    monkeypatch.setattr(bench_nets, "BLOCKS", (1, 2))


@pytest.mark.slow
def test_run_writes_the_nets_section_and_the_plot(tiny, tmp_path) -> None:
    out = tmp_path / "docs" / "benchmarks.md"
    out.parent.mkdir()
    out.write_text("# Benchmarks\n\n<!-- bench:engine -->\nkeep me\n<!-- /bench:engine -->\n")
    markdown = bench_nets.run(quick=True, output=out, size=16)
    text = out.read_text()
    assert "keep me" in text and "<!-- bench:nets -->" in text and markdown.strip() in text
    assert (tmp_path / "docs" / "img" / "nets_memory_vs_blocks.png").stat().st_size > 1000
    for row in ("| UNet3D | store", "| PartiallyInvResUNet | invert", "| FullyInvResUNet | store"):
        assert row in markdown
    assert "SegResNetVAE" in markdown and "No GPU in this run" in markdown
    assert "Partially-InvRes invert <= 35% of store twin" in markdown
    rows = [line.split("|") for line in markdown.splitlines() if line.startswith("| ")]
    share = {(r[1].strip(), r[2].strip()): r[5].strip() for r in rows if len(r) > 7}
    for name in ("PartiallyInvResUNet", "FullyInvResUNet"):  # invert holds less than store
        assert float(share[(name, "invert")].rstrip("%")) < 50.0
    for memory in (
        "checkpoint per level (torch)",
        "selective checkpoint (torch)",
        "save_on_cpu (torch)",
    ):
        assert ("UNet3D", memory) in share
    assert float(share[("UNet3D", "save_on_cpu (torch)")].rstrip("%")) == 100.0  # CPU
    assert ("MONAI UNet", "CheckpointUNet") in share
    lift = float(share[("FullyInvResUNet (lift)", "invert")].rstrip("%"))
    assert lift < float(share[("FullyInvResUNet", "invert")].rstrip("%"))
    assert "Against the `UNet3D` twin (store) in the same run" in markdown


def test_depth_sweep_checkpoint_row_is_flat_and_selective_sits_between(tiny) -> None:
    x = torch.randn(1, bench_nets.IN_CHANNELS, 16, 16, 16)
    sweep = bench_nets._depth_sweep(16, torch.device("cpu"), x)
    store, ckpt, sac = (sweep[k] for k in ("UNet3D", "UNet3D ckpt per level", "UNet3D selective"))
    assert ckpt[1] == ckpt[2]  # UNet3D(memory="checkpoint") keeps only level inputs
    for b in (1, 2):
        assert ckpt[b] < sac[b] < store[b]
    assert store[2] > store[1] and sac[2] > sac[1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"device": "tpu"}, "device"), ({"size": 12}, "multiple of 8")],
)
def test_bad_arguments_are_rejected(tmp_path, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        bench_nets.run(output=tmp_path / "b.md", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_a_gpu_says_so(tmp_path) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        bench_nets.run(output=tmp_path / "b.md", device="cuda")
