"""PNG heatmaps for the research maps (patching, per-head focus, attributions), written atomically.

matplotlib with the Agg backend (no display needed). NaN cells (e.g. unpatched positions) are grey; a map with
signed values is centred on 0 with a diverging colour map.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def heatmap_png(matrix, path: Path | str, *, title: str, xlabel: str, ylabel: str,
                xticklabels: Sequence[str] | None = None, yticklabels: Sequence[str] | None = None,
                signed: bool | None = None, colorbar: str = "") -> Path:
    """Write `matrix` (rows x columns) as a PNG heatmap; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from leaf.io import write_bytes_atomic

    values = torch.as_tensor(matrix, dtype=torch.float32).numpy()
    finite = values[np.isfinite(values)]
    if signed is None:
        signed = bool(finite.size and finite.min() < 0)
    rows, cols = values.shape
    width = min(max(5.0, 0.14 * cols + 3.0), 36.0)
    height = min(max(3.2, 0.32 * rows + 2.2), 24.0)
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    cmap = plt.get_cmap("RdBu_r" if signed else "viridis").with_extremes(bad="#d0d0d0")
    limit = float(np.abs(finite).max()) if finite.size else 1.0
    kwargs = {"vmin": -limit, "vmax": limit} if signed else {}
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, interpolation="nearest", **kwargs)
    fig.colorbar(image, ax=ax, label=colorbar)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticklabels is not None:
        step = max(1, -(-cols // 240))          # at most ~240 labels; every step-th beyond that
        ax.set_xticks(range(0, cols, step))
        ax.set_xticklabels(list(xticklabels)[::step], rotation=90, fontsize=6)
    if yticklabels is not None:
        ax.set_yticks(range(rows))
        ax.set_yticklabels(list(yticklabels), fontsize=8)
    fig.tight_layout()
    try:
        path = Path(path)
        write_bytes_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path
