"""Mixed precision: one choice made by the entry point and passed to every training, defense and evaluation loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark.core.archs import build_classifier
from benchmark.core.augment import AugmentSpec
from benchmark.core.data import ImageSet
from benchmark.core.errors import ConfigError
from benchmark.core.evaluate import predict
from benchmark.core.precision import Precision
from benchmark.core.training import TrainRecipe, train_classifier
from benchmark.run.config import build_run_config
from benchmark.run.model import clean_model_path, model_cache_path
from benchmark.run.runtime import setup_runtime
from defenses.base import DefenseData
from defenses.rnp import RNP
from tests.conftest import FAST, compose_cfg


def conv_output_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    """Records the dtype of every output of the model's first convolution."""
    seen: list[torch.dtype] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def tiny_data(n: int = 64) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g), torch.arange(n) % 4)


def test_a_bad_precision_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"precision='fp16' is invalid: choose from auto, fp32, bf16"):
        setup_runtime(0, "cpu", precision="fp16")
    with pytest.raises(ConfigError, match=r"precision='fp16' is invalid: choose from auto, fp32, bf16"):
        Precision("fp16")  # type: ignore[arg-type]


CHOICES = [("auto", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16)]


@pytest.mark.parametrize(("choice", "want"), CHOICES)
def test_training_and_evaluation_on_the_cpu_run_in_the_chosen_precision(choice: str, want: torch.dtype) -> None:
    device, chosen = setup_runtime(0, "cpu", precision=choice), Precision(choice)  # type: ignore[arg-type]
    assert chosen.resolved(device) == ("bf16" if want == torch.bfloat16 else "fp32")
    model = build_classifier("convnet", 4, 1, [0.5], [0.25], width=4)
    dtypes = conv_output_dtypes(model)
    recipe = TrainRecipe(epochs=1, batch_size=32, lr=0.01, warmup_epochs=0.0)
    gen = torch.Generator().manual_seed(0)
    train_classifier(model, tiny_data(), recipe, AugmentSpec(crop_pad=1), gen, precision=chosen)
    predict(model, tiny_data().x, precision=chosen)
    assert dtypes and set(dtypes) == {want}


def test_cuda_defaults_to_bf16_and_fp32_turns_it_off() -> None:
    cuda = torch.device("cuda")  # only the policy is asked: no CUDA device is needed
    assert Precision("auto").dtype(cuda) == torch.bfloat16 and Precision("auto").resolved(torch.device("cpu")) == "fp32"
    assert Precision("fp32").dtype(cuda) is None


def test_rnp_learns_masks_in_bf16_on_the_cpu() -> None:
    device, bf16 = setup_runtime(0, "cpu", precision="bf16"), Precision("bf16")
    model = build_classifier("convnet", 4, 1, [0.5], [0.25], width=4)
    recipe = TrainRecipe(epochs=2, batch_size=32, lr=0.05, warmup_epochs=0.0)
    train_classifier(
        model, tiny_data(), recipe, AugmentSpec(crop_pad=1), torch.Generator().manual_seed(0), precision=bf16
    )
    dtypes = conv_output_dtypes(model)  # RNP's deep copies keep the hook
    rnp = RNP(batch_size=32, unlearn_epochs=2, recover_epochs=2, clean_threshold=0.0)
    out = rnp(
        model, DefenseData(tiny_data(32), AugmentSpec(crop_pad=1), 4, bf16), torch.Generator(device).manual_seed(0)
    )
    assert out.info["unlearn"]["epochs"] == 2 and out.info["recover"]["epochs"] == 2
    assert all(0.0 <= q <= 1.0 for q in out.info["mask_quantiles"].values())
    assert len(dtypes) == 2 * 1 + 2 * 1 and set(dtypes) == {torch.bfloat16}  # one batch an epoch, each stage


def test_bf16_trained_models_are_cached_apart_from_fp32_ones() -> None:
    cpu, root = torch.device("cpu"), Path("/cache")
    paths = {}
    for choice in ("auto", "fp32", "bf16"):
        parts = build_run_config(compose_cfg([*FAST, f"precision={choice}"]))
        paths[choice] = (model_cache_path(parts, root, cpu), clean_model_path(parts, root, cpu))
    assert paths["auto"] == paths["fp32"]
    assert paths["bf16"][0] != paths["fp32"][0] and paths["bf16"][1] != paths["fp32"][1]


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),  # AMD Zen 4 EPYC: AVX-512 BF16, no AMX
        ("fpu avx512f amx_bf16 amx_tile amx_int8", True),  # Intel Sapphire Rapids
        ("fpu sse2 avx2 avx512f avx512_vnni", False),  # AVX-512 without bf16: emulated
        ("fpu sse2 avx2 fma", False),
    ],
)
def test_native_bf16_is_read_from_amx_or_avx512_bf16_flags(flags: str, native: bool) -> None:
    from benchmark.core.precision import has_bf16_flag

    assert has_bf16_flag(flags) is native
