"""Labelled imagery loaded: the labels of a :class:`~geodetect.io.labels.LabelSource` on
grids at the training GSD (:class:`LabelledData`, :func:`load_labelled`), a filled
review's objects, rejections and known ground added to them (:func:`with_review`), and
the check that all the imagery has one band layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
import torch
from torchvision.ops import box_iou

from geodetect.errors import LabelError, RasterError
from geodetect.io.labels import (
    GridLabels,
    LabelSource,
    boxes_on_grid,
    chip_class_names,
    chips_on_grids,
    class_names,
    labels_on_grids,
    largest_side,
    map_to_pixel_boxes,
    read_coco,
    read_labels,
    read_voc_folder,
    read_yolo,
)
from geodetect.io.raster import (
    MosaicGrid,
    grid_gsd_metres,
    open_mosaics,
    open_raster,
    resample_to_gsd,
)
from geodetect.io.review import ReviewLabels, review_labels
from geodetect.train.sizes import (
    GSD_TOLERANCE,
    TYPICAL_PERCENTILE,
    _log_coarser,
    _upper_median,
    object_scaled_gsd,
    to_training_gsd,
)


@dataclass
class LabelledData:
    """Labelled grids ready for sampling, and what they say about the imagery.

    Attributes:
        grids: one :class:`GridLabels` per mosaic grid (or chip image).
        classes: sorted class names; label indices point into this list.
        ordered: True for chip folders (split by file order, see :func:`plan_split`).
        source: short description for logs and the model's training record.
    """

    grids: list[GridLabels]
    classes: list[str]
    ordered: bool = False
    source: dict = field(default_factory=dict)

    @property
    def num_objects(self) -> int:
        return sum(len(g) for g in self.grids)

    @property
    def input_dtype(self) -> str:
        return self.grids[0].grid.dtype

    @property
    def num_bands(self) -> int:
        return self.grids[0].grid.count

    @property
    def max_object_px(self) -> float:
        return max(largest_side(g.boxes) for g in self.grids)

    def object_sides_px(self) -> np.ndarray:
        """Longest side in pixels of every labelled object (float64 [N])."""
        sides = [
            np.maximum(g.boxes[:, 2] - g.boxes[:, 0], g.boxes[:, 3] - g.boxes[:, 1])
            for g in self.grids
        ]
        return np.concatenate(sides) if sides else np.zeros(0)

    @property
    def typical_object_px(self) -> float:
        """The size that chip sizes and overlaps are planned for: the
        :data:`TYPICAL_PERCENTILE` th percentile of the objects' longest sides, so one
        outlier (a lake labelled as a pool, a water park) does not set them."""
        sides = self.object_sides_px()
        return float(np.percentile(sides, TYPICAL_PERCENTILE)) if len(sides) else 0.0

    def gsd(self) -> float | None:
        """Pixel size in metres of the training grids (all at one GSD after
        :func:`to_training_gsd`; the upper median otherwise); None without a CRS."""
        sizes = [s for s in (grid_gsd_metres(g.grid) for g in self.grids) if s]
        return _upper_median(sizes) if sizes else None

    def band_names(self) -> list[str]:
        """Band names from the first raster's colour interpretation (``band<i>`` when
        unknown)."""
        grid = self.grids[0].grid
        names = []
        with open_raster(grid.paths[0]) as ds:
            for band in grid.bands:
                interp = ds.colorinterp[band - 1].name
                names.append(
                    interp
                    if interp not in ("undefined", "gray", "grey")
                    else (ds.descriptions[band - 1] or f"band{band}")
                )
        return names if len(set(names)) == len(names) else [f"band{b}" for b in grid.bands]


def load_labelled(source: LabelSource, *, gsd: float | None = None) -> LabelledData:
    """Read the training labels of ``source`` (rasters + a label layer, a VOC chip
    folder, a COCO JSON file or a YOLO folder); check that all imagery has one band
    layout. Rasters are read at one training GSD (see :func:`to_training_gsd`; ``gsd``
    metres imposes it, as resuming a model does).

    Raises:
        InputError: missing files.
        LabelError: unusable labels (see :func:`geodetect.io.labels.read_labels`).
        RasterError: rasters that differ in band count or data type.
    """
    if source.kind == "layer":
        gdf = None
        if source.path is not None:
            gdf = read_labels(
                source.path,
                layer=source.layer,
                class_field=source.class_field,
                point_size=source.point_size,
            )
        review = None if source.review is None else review_labels(source.review)
        classes = sorted(
            set(class_names(gdf) if gdf is not None else ())
            | set(review.positives["class"].astype(str) if review is not None else ())
        )
        if not classes:
            raise LabelError(
                f"{source.review}: no detection is judged pool and no missed pool is drawn; "
                "a detector needs objects to learn from"
            )

        def on(grids: list[MosaicGrid], *, again: bool = False) -> LabelledData:
            if gdf is not None:
                boxes = labels_on_grids(gdf, grids, classes, warn_outside=not again)
            else:
                boxes = [
                    GridLabels(g, np.zeros((0, 4)), np.zeros(0, dtype=np.int64)) for g in grids
                ]
            described = {**source.describe(), "images": [str(p) for g in grids for p in g.paths]}
            if review is not None:
                boxes = with_review(boxes, review, classes, labelled_files=gdf is not None)
                described["review_counts"] = review.counts
            return LabelledData(boxes, classes, source=described)

        opened = open_mosaics(list(source.images), gsd=gsd)  # a tile service at --gsd
        labelled = on(to_training_gsd(opened, gsd=gsd))
        finest = labelled.gsd()
        if gsd is None and finest:
            coarser = object_scaled_gsd(labelled.object_sides_px() * finest, finest)
            if coarser != finest:
                _log_coarser(labelled, finest, coarser)
                labelled = on(resample_to_gsd(opened, coarser, tolerance=GSD_TOLERANCE), again=True)
    else:
        reader = {"voc": read_voc_folder, "coco": read_coco, "yolo": read_yolo}[source.kind]
        chips = reader(source.path)
        classes = chip_class_names(chips)
        if not classes:
            raise LabelError(f"{source.path}: holds no labelled objects; export chips with labels")
        labelled = LabelledData(
            chips_on_grids(chips, classes), classes, ordered=True, source=source.describe()
        )
    _check_layout(labelled)
    return labelled


# A review's detection judged pool that overlaps a label-layer object by this IoU is
# that object, labelled twice; a rejected one that overlaps an object by this much is a
# second box on it, not background.
_SAME_OBJECT_IOU = 0.3
_ON_OBJECT_IOU = 0.1


def with_review(
    grids: Sequence[GridLabels],
    review: ReviewLabels,
    classes: Sequence[str],
    *,
    labelled_files: bool,
) -> list[GridLabels]:
    """Add a filled review to labelled grids.

    Its confirmed detections and drawn pools become objects (unless a label already
    marks them), its rejections hard negatives (``GridLabels.rejected``; not those on
    an object). What is known changes: without a label layer only the review's own
    boxes and done squares are (``GridLabels.known``); with one
    (``labelled_files``), the files that hold label-layer objects stay wholly known,
    as a label layer alone has them, and the review adds its places on the others.

    Raises:
        LabelError: none of the review's objects lies on the rasters.
    """
    index = {c: i for i, c in enumerate(classes)}
    classes_of = np.array([index[c] for c in review.positives["class"].astype(str)], np.int64)
    out, placed = [], 0
    for gl in grids:
        grid = gl.grid
        pos, on = boxes_on_grid(review.positives, grid)
        pos, pos_cls = pos[on], classes_of[on]
        placed += int(on.sum())
        if len(gl.boxes) and len(pos):
            pos_keep = _max_iou(pos, gl.boxes) < _SAME_OBJECT_IOU
            pos, pos_cls = pos[pos_keep], pos_cls[pos_keep]
        boxes = np.concatenate([gl.boxes, pos]).reshape(-1, 4)
        labels = np.concatenate([gl.classes, pos_cls]).astype(np.int64)
        rejected, on = boxes_on_grid(review.rejected, grid)
        rejected = rejected[on].reshape(-1, 4)
        if len(boxes) and len(rejected):
            rejected = rejected[_max_iou(rejected, boxes) < _ON_OBJECT_IOU]
        known, on = boxes_on_grid(review.known, grid)
        known = known[on].reshape(-1, 4)
        if labelled_files:
            files = _member_boxes(grid)
            holding = _max_iou(files, gl.boxes) > 0 if len(gl.boxes) else np.zeros(len(files), bool)
            known = None if holding.all() else np.concatenate([known, files[holding]])
        out.append(GridLabels(grid, boxes, labels, rejected, known))
    if not placed and len(review.positives):
        raise LabelError(
            f"none of the review's {len(review.positives)} pools lies on the input raster(s); "
            "give the rasters the reviewed layer was detected on"
        )
    return out


def _max_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each box of ``a``'s largest IoU with a box of ``b`` (float64 [len(a)])."""
    if not len(a) or not len(b):
        return np.zeros(len(a))
    return box_iou(torch.as_tensor(a), torch.as_tensor(b)).max(dim=1).values.numpy()


def _member_boxes(grid: MosaicGrid) -> np.ndarray:
    """Each member file's footprint in the grid's pixels (float64 [M, 4])."""
    from rasterio.warp import transform_bounds

    boxes = []
    for member in grid.members:
        bounds = member.info.grid.bounds
        if member.info.grid.crs != grid.crs:
            bounds = transform_bounds(member.info.grid.crs, grid.crs, *bounds)
        boxes.append(shapely.box(*bounds))
    return map_to_pixel_boxes(np.array(boxes, dtype=object), grid.transform)


def _check_layout(labelled: LabelledData) -> None:
    first = labelled.grids[0].grid
    for gl in labelled.grids[1:]:
        g = gl.grid
        if g.count != first.count or g.dtype != first.dtype:
            raise RasterError(
                f"{g.paths[0]}: has {g.count} band(s) of {g.dtype} but {first.paths[0]} has "
                f"{first.count} of {first.dtype}; train on imagery of one band layout"
            )
