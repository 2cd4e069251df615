"""The perf reference's loaders follow the authors' data code, and its per-phase seconds add up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

from benchmark.core.data import ImageSet
from studies.perf import bench as perf
from studies.perf import reference

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _images(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % 10)


def _by_hand(images: ImageSet) -> torch.Tensor:
    """ToTensor + Normalize of the numpy HWC uint8 images, written out: HWC -> CHW, /255, -mean, /std."""
    arrays = images.x.permute(0, 2, 3, 1).numpy()
    chw = torch.from_numpy(np.ascontiguousarray(arrays.transpose(0, 3, 1, 2))).float().div(255)
    return chw.sub(torch.tensor(MEAN)[:, None, None]).div(torch.tensor(STD)[:, None, None])


class _FromarrayCounter:
    """Stands in for PIL's Image.fromarray in the reference module, counting its calls."""

    def __init__(self, real: Callable[[np.ndarray], Image.Image]) -> None:
        self.real, self.calls = real, 0

    def __call__(self, array: np.ndarray) -> Image.Image:
        self.calls += 1
        return self.real(array)


@pytest.fixture
def fromarray(monkeypatch: pytest.MonkeyPatch) -> _FromarrayCounter:
    counter = _FromarrayCounter(reference.Image.fromarray)
    monkeypatch.setattr(reference.Image, "fromarray", counter)
    return counter


def test_test_loaders_hand_out_numpy_to_tensor_normalize_without_pil(fromarray: _FromarrayCounter) -> None:
    test, triggered = _images(5, 1), _images(4, 2)
    loaders = reference.make_loaders(_images(6, 3), test, triggered, MEAN, STD, defense_batch=3)
    for loader, images in ((loaders.clean, test), (loaders.poisoned, triggered)):
        assert loader.batch_size == reference.BATCH == 128 and isinstance(loader.sampler, SequentialSampler)
        x, y = next(iter(loader))
        assert torch.equal(x, _by_hand(images)) and torch.equal(y, images.y)
    assert fromarray.calls == 0  # the authors' DatasetBD hands numpy arrays to ToTensor, never PIL images


def test_the_clean_test_set_drops_the_target_class_as_the_authors_test_mode_does() -> None:
    test = _images(20, 4)
    kept = reference.without_target(test, 3)
    assert len(kept) == 18 and bool((kept.y != 3).all())
    assert torch.equal(kept.x, test.x[test.y != 3])


def test_defense_loader_goes_through_pil_once_per_image(fromarray: _FromarrayCounter) -> None:
    loaders = reference.make_loaders(_images(6, 3), _images(2, 1), _images(2, 2), MEAN, STD, defense_batch=3)
    batches = list(loaders.defense)
    assert [tuple(x.shape) for x, _ in batches] == [(3, 3, 8, 8), (3, 3, 8, 8)]
    assert fromarray.calls == 6  # torchvision's CIFAR10 makes a PIL image for the crop + flip


def test_phase_comparison_sets_reference_beside_ours() -> None:
    rnp = {"unlearn_epochs": 2, "recover_epochs": 4, "curve_s": 1.9, "curve_points": 19}
    info = {"unlearn": {"seconds": 1.0}, "recover": {"seconds": 2.0}}
    ref = {"unlearn_epoch_s": [1.0, 2.0], "recover_epoch_s": [1.0] * 4, "threshold_s": [0.5] * 19}
    phases = perf.phase_comparison(rnp, info, ref)
    assert phases["unlearn_s_per_epoch"] == {"reference": 1.5, "ours": 0.5, "ratio": 3.0}
    assert phases["recover_s_per_epoch"] == {"reference": 1.0, "ours": 0.5, "ratio": 2.0}
    assert phases["s_per_threshold"] == {"reference": 0.5, "ours": 0.1, "ratio": 5.0}


def test_tiny_run_reports_reference_seconds_per_phase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = perf.main(["--size", "tiny", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "p.json")])
    f = result["figures"]
    ref, rnp = f["reference_rnp"], f["rnp"]
    assert len(ref["unlearn_epoch_s"]) == ref["unlearn_epochs"] == rnp["unlearn_epochs"]
    assert len(ref["recover_epoch_s"]) == ref["recover_epochs"] == rnp["recover_epochs"]
    assert len(ref["threshold_s"]) == rnp["curve_points"] == 19
    laps = ref["unlearn_epoch_s"] + ref["recover_epoch_s"] + ref["threshold_s"]
    assert all(v > 0 for v in laps) and ref["loaders_s"] >= 0 and ref["setup_s"] >= 0
    assert ref["test_set_passes"] == 2 * (len(laps) + 1)  # and the unpruned model's evaluation
    parts = ref["loaders_s"] + ref["setup_s"] + ref["unpruned_eval_s"] + sum(laps)
    assert parts <= ref["seconds"] + 0.005  # rounding: each figure to the millisecond
    assert ref["unlearn_s"] == pytest.approx(sum(ref["unlearn_epoch_s"]), abs=0.005)
    assert ref["sweep_s"] == pytest.approx(sum(ref["threshold_s"]), abs=0.02)
    printed = capsys.readouterr().err
    for key, p in f["phases_reference_vs_ours"].items():
        assert p["reference"] > 0 and p["ours"] > 0 and p["ratio"] == pytest.approx(p["reference"] / p["ours"], 0.05)
        assert key in printed  # the summary prints every phase
