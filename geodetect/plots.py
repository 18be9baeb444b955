"""Pictures for notebooks and reports: chips with boxes, training curves, detections over
a mosaic. Functions return matplotlib Figures (no pyplot state), which Jupyter shows
inline and ``fig.savefig(path)`` writes to PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

COLOURS = {
    "tp": "#1a9641",
    "fp": "#d7191c",
    "miss": "#fdae61",
    "pred": "#2c7bb6",
    "truth": "#ffffbf",
}


def new_figure(**kwargs: Any) -> Figure:
    """A Figure without pyplot; inside Jupyter, make sure Figures display as PNG."""
    _register_png_display()
    return Figure(layout="constrained", **kwargs)


def _register_png_display() -> None:
    # Jupyter only shows a bare Figure once IPython's PNG formatter knows the type,
    # which normally happens on the first pyplot import; geodetect never imports pyplot.
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    formatter = getattr(shell, "display_formatter", None)
    if formatter is None:
        return
    png = formatter.formatters.get("image/png")
    if png is not None and Figure not in png.type_printers:
        from IPython.core.pylabtools import print_figure

        png.for_type(Figure, lambda fig: print_figure(fig, "png", bbox_inches="tight"))


def to_display(image: Any, valid: np.ndarray | None = None) -> np.ndarray:
    """[C, H, W] array or tensor of any dtype -> [H, W, 3] uint8 stretched 2-98 %."""
    arr = np.asarray(image.cpu() if hasattr(image, "cpu") else image, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    arr = arr[:3] if arr.shape[0] >= 3 else np.repeat(arr[:1], 3, axis=0)
    sample = arr[:, valid] if valid is not None and valid.any() else arr.reshape(3, -1)
    lo = np.percentile(sample, 2, axis=1)[:, None, None]
    hi = np.percentile(sample, 98, axis=1)[:, None, None]
    out = np.clip((arr - lo) / np.maximum(hi - lo, 1e-9), 0, 1)
    return (out.transpose(1, 2, 0) * 255).astype(np.uint8)


def _draw_boxes(ax, boxes, colour, labels=None, lw=1.5) -> None:
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=float).reshape(-1, 4)):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=lw))
        if labels is not None:
            ax.text(x1, y1, labels[i], color=colour, fontsize=7, va="bottom")


def show_chips(
    images: Sequence[Any],
    boxes: Sequence[Any],
    *,
    other_boxes: Sequence[Any] | None = None,
    labels: Sequence[Sequence[str]] | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    size: float = 3.0,
) -> Figure:
    """A grid of chips with their boxes (``xyxy`` pixels); ``other_boxes`` are drawn in a
    second colour (e.g. truth beside predictions)."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = new_figure(figsize=(size * ncols, size * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for k, ax in enumerate(axes):
        ax.set_axis_off()
        if k >= n:
            continue
        ax.imshow(to_display(images[k]))
        if other_boxes is not None:
            _draw_boxes(ax, other_boxes[k], COLOURS["truth"], lw=2.5)
        _draw_boxes(ax, boxes[k], COLOURS["pred"], labels[k] if labels else None)
        if titles:
            ax.set_title(titles[k], fontsize=9)
    return fig


def plot_history(history: Sequence[Any]) -> Figure:
    """Training loss and validation AP50 per epoch (items with ``epoch``, ``loss`` and
    ``map_50`` attributes, as :class:`geodetect.train.EpochStats`)."""
    fig = new_figure(figsize=(10, 3.5))
    loss_ax, metric_ax = fig.subplots(1, 2)
    epochs = [h.epoch for h in history]
    loss_ax.plot(epochs, [h.loss for h in history], "o-", label="training loss")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_ax.legend()
    scored = [(h.epoch, h.map_50) for h in history if h.map_50 is not None]
    if scored:
        metric_ax.plot(*zip(*scored, strict=True), "o-", label="validation AP50")
        metric_ax.legend(loc="lower right")
    metric_ax.set(xlabel="epoch", ylim=(0, 1.02), title="Validation AP50")
    return fig


def plot_lr_find(
    lrs: Sequence[float], losses: Sequence[float], suggestion: float | None = None
) -> Figure:
    """The learning-rate finder's loss curve on a log axis, with the suggested rate."""
    fig = new_figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot(lrs, losses)
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="LR finder")
    if suggestion:
        ax.axvline(suggestion, color=COLOURS["fp"], ls="--", label=f"suggested {suggestion:.1e}")
        ax.legend()
    return fig


def plot_detections(
    raster: Any,
    detections: Any = None,
    *,
    truth: Any = None,
    result: Any = None,
    max_side: int = 1500,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Detections over a downsampled view of a scene or mosaic.

    Args:
        raster: raster path(s), glob, folder or a list of mosaic grids (the first grid is
            shown).
        detections: GeoDataFrame of detections (any CRS; reprojected to the raster's).
        truth: optional GeoDataFrame of reference objects.
        result: optional :class:`~geodetect.evaluate.EvaluationResult` of ``detections``
            against ``truth``: true positives, false positives and misses get their own
            colours.
        path: also save the figure there (PNG by extension).
    """
    from geodetect.io.raster import MosaicGrid, open_mosaics, read_overview

    if isinstance(raster, list | tuple) and raster and isinstance(raster[0], MosaicGrid):
        grid = raster[0]
    else:
        grid = open_mosaics([raster] if isinstance(raster, str | os.PathLike) else raster)[0]
    data, valid, transform = read_overview(grid, max_side=max_side)
    image = to_display(data, valid)
    height, width = image.shape[:2]
    fig = new_figure(figsize=(10, max(3.0, 10 * height / width)))
    ax = fig.subplots()
    ax.imshow(image)
    ax.set_axis_off()
    inverse = ~transform

    def draw(gdf, colour, label, lw=1.2):
        if gdf is None or len(gdf) == 0:
            return
        if grid.crs is not None and gdf.crs is not None:
            gdf = gdf.to_crs(grid.crs.to_wkt())
        for geom in gdf.geometry.values:
            coords = shapely.get_coordinates(
                geom.exterior if hasattr(geom, "exterior") else geom.boundary
            )
            px = np.array([inverse @ tuple(c) for c in coords])
            ax.plot(px[:, 0], px[:, 1], color=colour, lw=lw)
        ax.plot([], [], color=colour, label=f"{label} ({len(gdf)})")

    if result is not None and detections is not None and truth is not None:
        det_ok = detections.loc[result.det_ids[result.det_matched]]
        det_bad = detections.loc[result.det_ids[~result.det_matched]]
        missed = truth.loc[result.truth_ids[~result.truth_found]]
        draw(det_ok, COLOURS["tp"], "true positive")
        draw(det_bad, COLOURS["fp"], "false positive", lw=1.8)
        draw(missed, COLOURS["miss"], "missed", lw=1.8)
    else:
        draw(truth, COLOURS["truth"], "truth")
        draw(detections, COLOURS["pred"], "detection")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    if title:
        ax.set_title(title)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
