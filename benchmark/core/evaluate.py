"""Evaluation in large batches under inference mode: clean accuracy, ASR and robust accuracy."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from benchmark.core.archs import to_input
from benchmark.core.data import ImageSet, TriggeredSet
from benchmark.core.precision import AUTO, Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metrics:
    """Fractions in [0, 1]: `asr` and `robust_acc` are on the triggered non-target test images."""

    clean_acc: float
    asr: float
    robust_acc: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in eval mode, on the CPU as a copy with every BatchNorm2d folded into the conv before it.

    Folding drops a pass over every activation map (and, in bf16, BN's fp32 round trip between casts; its
    speed-up on a CPU: docs/performance.md). Tracing and folding cost a few percent
    of one CPU test pass but more than they save on a GPU, so CUDA keeps the model as it is. Models FX cannot
    trace, and models with hooks (someone watches their modules), are kept too.
    """
    model.eval()
    compiled = hasattr(model, "_orig_mod")  # torch.compile'd: its compiled graph is kept
    if device.type != "cpu" or compiled or getattr(model, "bn_folded", False) or _has_hooks(model):
        return model
    try:
        root = copy.deepcopy(model)  # folding replaces submodules
        traced = fx.GraphModule(root, _NormLeafTracer().trace(root))
    except Exception as exc:  # data-dependent control flow: predict with the model as it is
        log.debug("BN folding skipped for %s: %s", type(model).__name__, exc)
        return model
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        conv = node.args[0] if node.op == "call_module" and node.args else None
        if not (_is_module(node, modules, nn.BatchNorm2d) and _is_module(conv, modules, nn.Conv2d)):
            continue
        if len(conv.users) != 1 or not modules[node.target].track_running_stats:
            continue  # the conv's output is used elsewhere too, or BN uses batch statistics
        parent, _, name = conv.target.rpartition(".")
        setattr(traced.get_submodule(parent), name, fuse_conv_bn_eval(modules[conv.target], modules[node.target]))
        node.replace_all_uses_with(conv)
        traced.graph.erase_node(node)
    traced.delete_all_unused_submodules()
    traced.recompile()
    traced.bn_folded = True
    return traced.to(memory_format=torch.channels_last)


class _NormLeafTracer(fx.Tracer):
    """Keeps every BatchNorm2d, subclasses included, as one call: a masked BN's Python flags must not be
    traced into the graph, and the exact-type check below then leaves it unfolded."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, qualname)


def _is_module(node: object, modules: dict[str, nn.Module], kind: type[nn.Module]) -> bool:
    """Whether `node` calls a module of exactly type `kind` (a subclass such as a masked BN does more)."""
    return isinstance(node, fx.Node) and node.op == "call_module" and type(modules[node.target]) is kind


def _has_hooks(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@torch.inference_mode()
def predict(model: nn.Module, x: Tensor, batch_size: int = 512, precision: Precision = AUTO) -> Tensor:
    """Predicted labels of uint8 images `x` (N, C, H, W), on x's device, model in eval mode."""
    net = for_inference(model, x.device)
    preds = []
    for i in range(0, len(x), batch_size):
        with precision.autocast(x.device):
            preds.append(net(to_input(x[i : i + batch_size])).argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=x.device)


def accuracy(model: nn.Module, data: ImageSet, batch_size: int = 1024, precision: Precision = AUTO) -> float:
    if len(data) == 0:
        return float("nan")
    return (predict(model, data.x, batch_size, precision) == data.y).float().mean().item()


def evaluate(
    model: nn.Module, test: ImageSet, triggered: TriggeredSet, batch_size: int = 1024, precision: Precision = AUTO
) -> Metrics:
    """Clean accuracy on the whole test set; ASR and robust accuracy on the triggered images."""
    model = for_inference(model, test.x.device)  # once for both sets
    clean = accuracy(model, test, batch_size, precision)
    if len(triggered.images) == 0:
        return Metrics(clean, float("nan"), float("nan"))
    pred = predict(model, triggered.images.x, batch_size, precision)
    asr = (pred == triggered.images.y).float().mean().item()
    robust = (pred == triggered.true_y).float().mean().item()
    return Metrics(clean, asr, robust)


def der(before: Metrics, after: Metrics) -> float:
    """Defense effectiveness rating: (max(0, dASR) - max(0, dCA) + 1) / 2, in [0, 1]."""
    d_asr = max(0.0, before.asr - after.asr)
    d_ca = max(0.0, before.clean_acc - after.clean_acc)
    return (d_asr - d_ca + 1) / 2
