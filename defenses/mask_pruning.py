"""What mask-based pruning defenses (RNP, ANP) share: the threshold curve, the final choice made without
test data, and the record of what was pruned. A subclass learns per-channel masks (`learn`); this turns them
into a defended model. Learning is the costly part and the knobs in POST_HOC act only after it, so with a
store (`DefenseData.store`) cells that differ in those knobs alone learn the masks once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from benchmark.core.data import ImageSet
from benchmark.core.evaluate import accuracy
from benchmark.core.precision import AUTO, Precision
from benchmark.core.validation import bounded
from defenses.base import CurvePoint, Defense, DefenseData, DefenseOutput, Learned
from defenses.masks import count_below, lowest_channels, mask_shapes, prune_channels


@dataclass
class MaskPruningDefense(Defense):
    """Pruning of the original model by learned masks: zero gamma where mask <= threshold.

    The curve sweeps thresholds `sweep_start..sweep_stop` (cumulative). The final model: `threshold`
    prunes at the fixed `prune_threshold`; `count` prunes the `prune_count` lowest masks; `holdout`
    holds out `holdout_fraction` of the defense data from mask learning and takes the largest threshold
    whose pruned model loses at most `max_holdout_drop` accuracy there.
    """

    sweep_start: float = bounded(0.0, 0.0, 1.0)
    sweep_stop: float = bounded(0.9, 0.0, 1.0)
    sweep_step: float = bounded(0.05, 1e-6, 1.0)
    selection: Literal["threshold", "count", "holdout"] = "threshold"
    prune_threshold: float = bounded(0.2, 0.0, 1.0)
    prune_count: int = bounded(20, 0)
    holdout_fraction: float = bounded(0.2, 0.0, 0.9)
    max_holdout_drop: float = bounded(0.02, 0.0, 1.0)

    # Knobs read only after the masks are learned. `selection` and `holdout_fraction` do change the data the
    # masks are learned on (a held-out part), but a store keys its entries by that data itself.
    POST_HOC = frozenset(
        {"sweep_start", "sweep_stop", "sweep_step", "selection", "prune_threshold", "prune_count"}
        | {"holdout_fraction", "max_holdout_drop"}
    )

    def __call__(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> DefenseOutput:
        fit, holdout = self.split(data.images, gen)
        fit_data = dataclasses.replace(data, images=fit)
        if data.store is None:
            masks, info = self.learn(model, fit_data, gen)
        else:
            kind = f"{type(self).__module__}.{type(self).__qualname__}"
            learn = lambda: self.learn(model, fit_data, gen)  # noqa: E731
            masks, info = data.store.recall(
                kind, self.learning_knobs(), model, fit_data, gen, learn, mask_shapes(model)
            )
        return self.finish(model, masks, holdout, info, data.precision)

    def learn(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> Learned:
        """The per-channel masks (name -> values in [0, 1]) learned on `data`, and their record."""
        raise NotImplementedError

    def learning_knobs(self) -> dict[str, Any]:
        """Every parameter that can change the learned masks (all but POST_HOC)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.POST_HOC}

    def thresholds(self) -> list[float]:
        n = round((self.sweep_stop - self.sweep_start) / self.sweep_step) + 1
        return [round(self.sweep_start + i * self.sweep_step, 6) for i in range(max(n, 1))]

    def split(self, images: ImageSet, gen: torch.Generator) -> tuple[ImageSet, ImageSet | None]:
        """The data the masks are learned on, and the held-out part (only for `selection=holdout`)."""
        return split_holdout(images, self.holdout_fraction if self.selection == "holdout" else 0.0, gen)

    def finish(
        self,
        model: nn.Module,
        masks: dict[str, Tensor],
        holdout: ImageSet | None,
        info: dict[str, Any],
        precision: Precision = AUTO,
    ) -> DefenseOutput:
        """Prune `model` by `masks` as `selection` says; record the curve and what was pruned."""
        curve = [self._curve_point(model, masks, t) for t in self.thresholds()]
        learned = masks
        if self.selection == "count":
            masks = keep_lowest(masks, self.prune_count)
            threshold, rule_info = 0.0, {"prune_count": self.prune_count}
        else:
            threshold, rule_info = self._select(model, masks, holdout, precision)
        pruned, n_pruned = prune_channels(model, masks, threshold)
        all_masks = torch.cat(list(masks.values()))
        info = dict(info)
        diagnostics = {
            **info.pop("diagnostics", {}),
            **mask_histogram(all_masks),
            "pruned": n_pruned,
            "total_channels": int(all_masks.numel()),
        }
        return DefenseOutput(
            model=pruned,
            info={
                "rule": self.selection,
                "selected_threshold": threshold if self.selection != "count" else None,
                "pruned": n_pruned,
                "total_channels": int(all_masks.numel()),
                "pruned_channels": lowest_channels(masks, threshold, learned),  # by count: with the learned values
                "mask_quantiles": {q: round(float(all_masks.quantile(q)), 4) for q in (0.0, 0.01, 0.05, 0.5)},
                "masks_below": {str(t): count_below(masks, t) for t in (0.0, 0.1, 0.2, 0.5)},
                **info,
                **rule_info,
                "diagnostics": diagnostics,
            },
            curve=curve,
        )

    def _select(
        self, model: nn.Module, masks: dict[str, Tensor], holdout: ImageSet | None, precision: Precision
    ) -> tuple[float, dict]:
        if self.selection == "threshold" or holdout is None:
            return self.prune_threshold, {}
        base = accuracy(model, holdout, precision=precision)
        scores = {
            t: accuracy(prune_channels(model, masks, t)[0], holdout, precision=precision) for t in self.thresholds()
        }
        ok = [t for t, acc in scores.items() if acc >= base - self.max_holdout_drop]
        return max(ok) if ok else min(scores), {
            "holdout_images": len(holdout),
            "holdout_acc_unpruned": round(base, 4),
            "holdout_acc": {str(t): round(a, 4) for t, a in scores.items()},
        }

    def _curve_point(self, model: nn.Module, masks: dict[str, Tensor], threshold: float) -> CurvePoint:
        n = count_below(masks, threshold)
        return CurvePoint(
            params={"threshold": threshold, "pruned": n},
            build=lambda: prune_channels(model, masks, threshold)[0],
            key=n,  # thresholds are cumulative, so the count identifies the pruned set
        )


def mask_histogram(masks: Tensor, bins: int = 10) -> dict[str, Any]:
    """The learned masks' histogram on [0, 1] and how many sit exactly at 0 and 1 (read once, after learning).

    Masks clamped to 0 are the channels the defense singled out; masks left at 1 are untouched; a histogram
    without a low tail means the mechanism found nothing to prune.
    """
    flat = masks.detach().float().cpu()
    return {
        "mask_histogram": {
            "edges": [round(i / bins, 4) for i in range(bins + 1)],
            "counts": flat.histc(bins, 0.0, 1.0).int().tolist(),
        },
        "masks_at_0": int((flat == 0).sum()),
        "masks_at_1": int((flat == 1).sum()),
    }


def keep_lowest(masks: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    """Masks with the `k` lowest values set to 0 and all others to 1 (pruning by count; ties by order)."""
    names = list(masks)
    flat = torch.cat([masks[n] for n in names])
    out = torch.ones_like(flat)
    out[torch.argsort(flat, stable=True)[:k]] = 0.0
    return dict(zip(names, out.split([len(masks[n]) for n in names]), strict=True))


def split_holdout(images: ImageSet, fraction: float, gen: torch.Generator) -> tuple[ImageSet, ImageSet | None]:
    """Split the defense data into the part the defense trains on and a held-out part for selection."""
    n_hold = round(fraction * len(images))
    if n_hold == 0:
        return images, None
    order = torch.randperm(len(images), device=images.x.device, generator=gen)
    return images.subset(order[n_hold:]), images.subset(order[:n_hold])
