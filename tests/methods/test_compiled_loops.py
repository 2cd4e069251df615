"""RNP's and ANP's loops through torch.compile (`compile=`), on the CPU: inductor's fused kernels, the same code
path that `reduce-overhead` replays as CUDA graphs on a GPU. Compiled float arithmetic is reordered, so the masks
are compared to the eager ones within a tolerance (eager itself is checked bit for bit: test_fidelity.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from benchmark.core.archs import build_classifier
from benchmark.core.augment import AugmentSpec
from benchmark.core.compilation import Compilation
from benchmark.core.data import ImageSet
from benchmark.core.errors import ConfigError
from defenses.anp import ANP
from defenses.base import DefenseData
from defenses.rnp import RNP


def data(mode: str = "eager") -> DefenseData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 16, 16), generator=g, dtype=torch.uint8)
    return DefenseData(ImageSet(x, torch.arange(32) % 5), AugmentSpec(crop_pad=1), 5, compilation=Compilation(mode))


def net() -> nn.Module:
    torch.manual_seed(0)
    return build_classifier("convnet", 5, 3, [0.5] * 3, [0.25] * 3, width=8)


def small_net() -> nn.Module:
    """Two conv-BN blocks: what the compiled masked model needs, in seconds of compiling rather than a minute."""
    torch.manual_seed(0)
    block = lambda cin: (nn.Conv2d(cin, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())  # noqa: E731
    return nn.Sequential(*block(3), *block(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def assert_close(eager: dict[str, torch.Tensor], compiled: dict[str, torch.Tensor]) -> None:
    assert list(eager) == list(compiled)
    moved = sum(int((m != 1).sum()) for m in eager.values())
    assert moved > 0, "the masks never moved: the comparison would say nothing"
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], atol=1e-4, rtol=0, msg=name)


def test_compiled_anp_learns_the_eager_masks() -> None:
    anp = ANP(batch_size=8, iterations=12)
    eager, _ = anp.learn(small_net(), data(), torch.Generator().manual_seed(3))
    compiled, _ = anp.learn(small_net(), data("reduce-overhead"), torch.Generator().manual_seed(3))  # default on CPU
    assert_close(eager, compiled)


@pytest.mark.slow  # two more graphs to compile (~1 min on 2 cores)
def test_compiled_rnp_learns_the_eager_masks() -> None:
    rnp = RNP(batch_size=8, unlearn_epochs=2, clean_threshold=0.0, recover_epochs=2)
    eager, _ = rnp.learn(net(), data(), torch.Generator().manual_seed(3))
    compiled, _ = rnp.learn(net(), data("default"), torch.Generator().manual_seed(3))
    assert_close(eager, compiled)


def test_modes_resolve_per_device_and_refuse_what_torch_lacks() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert Compilation("reduce-overhead").resolved(cpu) == "default"
    assert Compilation("reduce-overhead").resolved(cuda) == "reduce-overhead"
    assert Compilation().resolved(cuda) == "eager" and not Compilation().enabled
    model = net()
    assert Compilation().wrap(model, cpu) is model  # eager: the very module, nothing wrapped
    with pytest.raises(ConfigError, match="compile='fast' is invalid"):
        Compilation("fast")  # type: ignore[arg-type]
    assert dataclasses.replace(data(), compilation=Compilation("default")).compilation.enabled


def test_steps_are_marked_for_cuda_graphs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    marks: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    Compilation("reduce-overhead").step(cpu)  # no CUDA graphs on the CPU
    Compilation("default").step(cuda)  # inductor without CUDA graphs
    Compilation().step(cuda)
    assert marks == []
    Compilation("reduce-overhead").step(cuda)
    Compilation("max-autotune").step(cuda)
    assert marks == [1, 1]
