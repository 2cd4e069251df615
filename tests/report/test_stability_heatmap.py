"""The stability heat-map marks costly cells so that a reader sees them, on dark and on light cells alike, even when
a page shows the image scaled down (the hairline near-white hatching of before vanished there on light cells)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmark.report import plots
from benchmark.report.stability import Point, Stability, hatch_ink, heatmap

# (eps, threshold) -> (ASR, cost): a dark green costly cell, a light costly cell, a dark red costly one, a cheap one
CELLS = {
    ("0.2", "0.1"): (0.03, 0.05),
    ("0.4", "0.1"): (0.40, 0.07),
    ("0.2", "0.2"): (1.0, 0.05),
    ("0.4", "0.2"): (1.0, 0.01),
}


def rendered(tmp_path: Path, monkeypatch: Any, scale: float) -> tuple[np.ndarray, dict[tuple[str, str], tuple]]:
    """The PNG scaled by `scale` (as a page might show it), and each cell's pixel box in it."""
    boxes: dict[tuple[str, str], tuple] = {}
    save = plots.save_figure

    def spy(fig: Any, path: Path) -> Path:
        fig.set_dpi(110)  # the dpi save_figure writes at, so that the boxes below are the file's pixels
        fig.canvas.draw()
        ax, height = fig.axes[0], fig.bbox.height
        for (eps, thr), _ in CELLS.items():
            j, i = ["0.2", "0.4"].index(eps), ["0.1", "0.2"].index(thr)
            (x0, y0), (x1, y1) = ax.transData.transform([(j - 0.5, i - 0.5), (j + 0.5, i + 0.5)])
            boxes[(eps, thr)] = (x0 * scale, (height - y1) * scale, x1 * scale, (height - y0) * scale)
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", spy)
    points = tuple(Point(k, a, c, 0, 1) for k, (a, c) in sorted(CELLS.items()))
    path = heatmap(tmp_path / "h.png", Stability("d", "a", "x", "anp", ("eps", "thr"), points), 0.10, 0.03)
    image = Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    return np.asarray(image).astype(float), boxes


def marked_share(image: np.ndarray, box: tuple) -> float:
    """Share of a cell's pixels (its label's middle band left out) far from the cell's own colour."""
    x0, y0, x1, y1 = (round(v) for v in box)
    cell = image[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
    h = cell.shape[0]
    cell = np.concatenate([cell[: int(0.4 * h)], cell[int(0.6 * h) :]])
    base = np.median(cell.reshape(-1, 3), axis=0)
    return float((np.abs(cell - base).sum(-1) > 90).mean())


def test_costly_cells_stand_out_at_full_and_half_size(tmp_path: Path, monkeypatch: Any) -> None:
    for scale in (1.0, 0.5):
        image, boxes = rendered(tmp_path, monkeypatch, scale)
        for key, (_asr, cost) in CELLS.items():
            share = marked_share(image, boxes[key])
            if cost > 0.03:
                assert share > 0.08, f"costly cell {key} at scale {scale}: only {share:.1%} of it marked"
            else:
                assert share < 0.02, f"cheap cell {key} at scale {scale}: {share:.1%} of it marked"


def test_hatch_ink_contrasts_with_the_cell() -> None:
    assert hatch_ink((0.0, 0.4, 0.2, 1.0)) == "white"  # dark green
    assert hatch_ink((0.85, 0.92, 0.55, 1.0)) == "0.1"  # light yellow-green
