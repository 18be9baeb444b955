"""Training labels: label layers turned into pixel boxes on mosaic grids, and chip folders
(PASCAL VOC as ArcGIS exports it, COCO JSON, YOLO folders from Ultralytics or Roboflow)
read into the same pixel-box form.

Pixel boxes follow the project convention: ``xyxy`` in pixel-edge coordinates of the
array they belong to (pixel (0, 0) covers [0, 1) × [0, 1)). A labelled object's box is
the envelope, in pixel space, of its polygon reprojected to the grid's CRS.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import yaml
from affine import Affine
from pyproj import CRS

from geodetect.errors import InputError, LabelError
from geodetect.geometry.boxes import boxes_overlap
from geodetect.geometry.grid import window_box
from geodetect.io.raster import Member, MosaicGrid, scene_info
from geodetect.io.tiles import SERVICES, TileService, WmtsService
from geodetect.io.units import layer_utm
from geodetect.io.vectors import layer_name, read_layer, repair_geometries, to_crs_checked

log = logging.getLogger(__name__)

DEFAULT_CLASS = "pool"
CLASS_FIELD = "class"
SIZE_FIELD = "size"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

_POINT = int(shapely.GeometryType.POINT)
_MULTIPOINT = int(shapely.GeometryType.MULTIPOINT)
_LINE_TYPES = {
    int(shapely.GeometryType.LINESTRING),
    int(shapely.GeometryType.LINEARRING),
    int(shapely.GeometryType.MULTILINESTRING),
}


#: The kinds of label source: a label layer over rasters, or a chip dataset.
LABEL_KINDS = ("layer", "voc", "coco", "yolo")


@dataclass(frozen=True)
class LabelSource:
    """Where training labels come from, checked when made.

    ``kind="layer"``: a label layer (``path``: any vector format and CRS; polygons,
    boxes or points) over raster ``images`` (files, globs or folders). Otherwise a chip
    dataset that carries its own images: ``"voc"`` (a PASCAL VOC folder, as ArcGIS
    "Export Training Data For Deep Learning" writes it), ``"coco"`` (a COCO JSON file)
    or ``"yolo"`` (an Ultralytics or Roboflow folder, see :func:`read_yolo`).

    ``layer``, ``class_field`` and ``point_size`` say how to read a label layer (see
    :func:`read_labels`).

    ``review``: a review filled in QGIS (``geodetect sample``) over the same ``images``,
    with or without a label layer (``path`` None): its confirmed detections and drawn
    pools are objects, its rejections hard negatives, and only where it looked counts
    as known (see :func:`geodetect.io.review.review_labels`).
    """

    kind: str
    path: Path | None
    images: tuple[str | TileService | WmtsService, ...] = ()
    layer: str | int | None = None
    class_field: str | None = None
    point_size: float | None = None
    review: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise InputError(
                f"unknown label source {self.kind!r}; choose one of {', '.join(LABEL_KINDS)}"
            )
        if self.kind != "layer" and self.review is not None:
            raise InputError(
                "--review goes with IMAGE... (the rasters the reviewed layer was detected "
                "on), not with --voc, --coco or --yolo"
            )
        if self.kind == "layer" and self.path is None and self.review is None:
            raise InputError("give --labels or --review with the IMAGEs to train on")
        if self.kind == "layer" and not self.images:
            raise InputError(
                f"{'--labels' if self.path is not None else '--review'} needs at least one "
                "IMAGE to train on"
            )
        if self.kind != "layer" and self.images:
            raise InputError(
                "IMAGE arguments cannot be combined with --voc, --coco or --yolo; "
                "the chips are the images"
            )

    @classmethod
    def of(
        cls,
        images: Sequence[str | os.PathLike[str]] | None = None,
        labels: str | os.PathLike[str] | None = None,
        *,
        voc: str | os.PathLike[str] | None = None,
        coco: str | os.PathLike[str] | None = None,
        yolo: str | os.PathLike[str] | None = None,
        layer: str | int | None = None,
        class_field: str | None = None,
        point_size: float | None = None,
        review: str | os.PathLike[str] | None = None,
    ) -> LabelSource:
        """The source ``geodetect train``'s options name: ``IMAGE... --labels FILE``,
        ``--voc DIR``, ``--coco JSON`` or ``--yolo DIR``, exactly one of them; or
        ``IMAGE... --review REVIEW`` with or without ``--labels``.

        Raises:
            InputError: no source, several, or images beside a chip dataset.
        """
        given = [
            (k, p)
            for k, p in (("layer", labels), ("voc", voc), ("coco", coco), ("yolo", yolo))
            if p is not None
        ]
        if not given and review is not None:
            given = [("layer", None)]
        if len(given) != 1:
            raise InputError(
                "give training labels in one way: IMAGE... with --labels (and/or --review), "
                "or --voc DIR, or --coco JSON, or --yolo DIR"
            )
        kind, path = given[0]
        return cls(
            kind,
            None if path is None else Path(path),
            # a tile service keeps its area; anything else is a path or URL
            tuple(p if isinstance(p, SERVICES) else os.fspath(p) for p in images or ()),
            layer=layer,
            class_field=class_field,
            point_size=point_size,
            review=None if review is None else Path(review),
        )

    @classmethod
    def guess(
        cls,
        path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        labels: str | os.PathLike[str] | None = None,
        *,
        class_field: str | None = None,
        review: str | os.PathLike[str] | None = None,
    ) -> LabelSource:
        """The notebook API's way: rasters (files, globs or folders) with a ``labels``
        layer and/or a ``review``, or, with neither, one folder that is a YOLO dataset or
        a VOC export (``images/`` + ``labels/``)."""
        paths = [path] if isinstance(path, str | os.PathLike) else list(path)
        alone = labels is None and review is None and len(paths) == 1
        if alone and is_yolo_folder(paths[0]):
            return cls.of(yolo=paths[0])
        if alone and (Path(paths[0]) / "labels").is_dir():
            return cls.of(voc=paths[0])
        return cls.of(paths, labels, class_field=class_field, review=review)

    def describe(self) -> dict[str, str]:
        """The source as a model file's training record names it."""
        out = (
            {}
            if self.path is None
            else {"labels" if self.kind == "layer" else self.kind: str(self.path)}
        )
        if self.review is not None:
            out["review"] = str(self.review)
        return out


@dataclass(frozen=True)
class GridLabels:
    """Labelled objects on one mosaic grid.

    Attributes:
        grid: the mosaic grid the boxes are measured on.
        boxes: float64 [N, 4], ``xyxy`` pixel-edge coordinates of ``grid`` (a box may
            reach past the grid's edge when its object does).
        classes: int64 [N], indices into the sorted class list of the label set.
        rejected: float64 [R, 4], boxes a reviewer judged not to be objects (hard
            negatives; never targets).
        known: float64 [K, 4], the only boxes where the labels are known to be
            complete (a review's judged objects and search squares); None: the whole
            grid is (a label layer's grids).
    """

    grid: MosaicGrid
    boxes: np.ndarray
    classes: np.ndarray
    rejected: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4)))
    known: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)


def read_labels(
    path: str | os.PathLike[str],
    *,
    layer: str | int | None = None,
    class_field: str | None = None,
    point_size: float | None = None,
    size_field: str = SIZE_FIELD,
) -> gpd.GeoDataFrame:
    """Read a label layer as valid polygons with a ``class`` column.

    Args:
        path: any vector file :func:`geodetect.io.vectors.read_layer` reads.
        layer: layer name or index inside a multi-layer dataset.
        class_field: attribute holding each object's class. Default: ``"class"`` when
            the layer has it, else every object is ``"pool"``.
        point_size: side in metres of the square drawn around each point label that
            has no ``size_field`` value.
        size_field: attribute with a per-point side in metres (used when present).

    Returns:
        GeoDataFrame in the layer's CRS with columns ``class`` (str) and ``geometry``
        (valid Polygon / MultiPolygon). Points become squares centred on the point.

    Raises:
        InputError: the file is missing or is not a vector file.
        LabelError: the layer is empty, holds lines, lacks ``class_field``, has points
            without a size, or nothing usable is left after repair.
    """
    gdf = read_layer(path, layer=layer)
    name = layer_name(gdf)
    if len(gdf) == 0:
        raise LabelError(f"{name}: label layer holds no features; draw or export labels first")

    if class_field is not None and class_field not in gdf.columns:
        columns = ", ".join(c for c in gdf.columns if c != gdf.geometry.name) or "none"
        raise LabelError(
            f"{name}: has no attribute {class_field!r} for the class (attributes: {columns}); "
            "name an existing one"
        )
    field = class_field or (CLASS_FIELD if CLASS_FIELD in gdf.columns else None)
    if field is None:
        classes = pd.Series(DEFAULT_CLASS, index=gdf.index, dtype=object)
    else:
        classes = gdf[field]
        missing = classes.isna() | (classes.astype(str).str.strip() == "")
        if missing.any():
            log.warning(
                "%s: %d label(s) without a %r value ignored", name, int(missing.sum()), field
            )
            gdf, classes = gdf.loc[~missing], classes[~missing]
        classes = classes.astype(str).str.strip()

    geoms = np.asarray(gdf.geometry.to_numpy(), dtype=object)
    kinds = shapely.get_type_id(geoms)
    if np.isin(kinds, list(_LINE_TYPES)).any():
        raise LabelError(
            f"{name}: holds lines; labels must be polygons, boxes or points with a size"
        )
    points = (kinds == _POINT) | (kinds == _MULTIPOINT)
    out = gpd.GeoDataFrame(
        {"class": classes.to_numpy(dtype=object)}, geometry=geoms, crs=gdf.crs, index=gdf.index
    )
    out.attrs = dict(gdf.attrs)
    if points.any():
        sizes = _point_sizes(gdf.loc[points], name, point_size, size_field)
        out.loc[points, "geometry"] = _point_squares(out.loc[points], sizes)

    repaired, report = repair_geometries(out)
    if report.repaired:
        log.info(
            "%s: %d invalid label geometr%s repaired",
            name,
            report.repaired,
            "y" if report.repaired == 1 else "ies",
        )
    if report.dropped:
        log.warning(
            "%s: %d label(s) without a usable polygon dropped (null, empty or "
            "collapsed geometries)",
            name,
            report.dropped,
        )
    if len(repaired) == 0:
        raise LabelError(
            f"{name}: no usable label polygons are left after repair; check "
            "the geometries in your GIS"
        )
    return repaired[["class", "geometry"]]


def _point_sizes(
    points: gpd.GeoDataFrame, name: str, point_size: float | None, size_field: str
) -> np.ndarray:
    """Side in metres for each point: its ``size_field`` value, else ``point_size``."""
    sizes = np.full(len(points), np.nan if point_size is None else float(point_size))
    if size_field in points.columns:
        given = pd.to_numeric(points[size_field], errors="coerce").to_numpy(dtype=float)
        sizes = np.where(np.isfinite(given) & (given > 0), given, sizes)
    if not (np.isfinite(sizes) & (sizes > 0)).all():
        raise LabelError(
            f"{name}: point labels need a size; add a {size_field!r} attribute in metres "
            "or pass --point-size METRES"
        )
    return sizes


def _point_squares(points: gpd.GeoDataFrame, sizes: np.ndarray) -> np.ndarray:
    """Squares of side ``sizes`` metres around each point, in the points' CRS.

    The squares are drawn in a metric CRS (the layer's own when it is projected in
    metres, else the local UTM zone) and reprojected back, so a size means metres on the
    ground whatever the layer's CRS.
    """
    crs = CRS.from_user_input(points.crs)
    metric = crs.is_projected and crs.axis_info[0].unit_name in ("metre", "meter")
    work = points if metric else points.to_crs(layer_utm(crs, points.total_bounds))
    centres = shapely.centroid(np.asarray(work.geometry.to_numpy(), dtype=object))
    x, y = shapely.get_x(centres), shapely.get_y(centres)
    half = sizes / 2.0
    squares = shapely.box(x - half, y - half, x + half, y + half)
    if metric:
        return squares
    return gpd.GeoSeries(squares, crs=work.crs, index=points.index).to_crs(crs).to_numpy()


def class_names(labels: gpd.GeoDataFrame) -> list[str]:
    """The sorted class list of a label layer read by :func:`read_labels`."""
    return sorted(set(labels["class"].astype(str)))


def map_to_pixel_boxes(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Envelopes, in pixel space of ``transform``, of polygons in its map coordinates.

    Args:
        geoms: array [N] of shapely geometries in the grid's CRS.
        transform: the grid's affine (pixel edge -> map).

    Returns:
        float64 [N, 4] ``xyxy`` pixel-edge boxes (NaN for empty geometries).
    """
    boxes = np.full((len(geoms), 4), np.nan)
    if len(geoms) == 0:
        return boxes
    coords, owner = shapely.get_coordinates(geoms, return_index=True)
    inverse = ~transform
    px = inverse.a * coords[:, 0] + inverse.b * coords[:, 1] + inverse.c
    py = inverse.d * coords[:, 0] + inverse.e * coords[:, 1] + inverse.f
    for column, values, reduce in (
        (0, px, np.fmin),
        (1, py, np.fmin),
        (2, px, np.fmax),
        (3, py, np.fmax),
    ):
        init = np.inf if reduce is np.fmin else -np.inf
        out = np.full(len(geoms), init)
        reduce.at(out, owner, values)
        boxes[:, column] = np.where(np.isfinite(out), out, np.nan)
    return boxes


def boxes_on_grid(layer: gpd.GeoDataFrame, grid: MosaicGrid) -> tuple[np.ndarray, np.ndarray]:
    """Pixel boxes (float64 [N, 4]) of a layer's geometries on ``grid`` (reprojected to
    its CRS), and which of them overlap the grid with positive area (bool [N])."""
    local = to_crs_checked(layer, grid.crs)
    boxes = map_to_pixel_boxes(np.asarray(local.geometry.to_numpy(), dtype=object), grid.transform)
    on_grid = np.isfinite(boxes).all(axis=1) & boxes_overlap(
        boxes, window_box(0, 0, grid.height, grid.width)
    )
    return boxes, on_grid


def labels_on_grids(
    labels: gpd.GeoDataFrame,
    grids: Sequence[MosaicGrid],
    classes: Sequence[str],
    *,
    warn_outside: bool = True,
) -> list[GridLabels]:
    """Pixel boxes of the labels on each mosaic grid (reprojected to each grid's CRS).

    A label counts on a grid when its box overlaps the grid's extent with positive area;
    labels on no grid at all are counted in one warning (unless ``warn_outside`` is
    False: the same labels placed again on the same area at another GSD).

    Raises:
        LabelError: no label overlaps any of the rasters.
    """
    name = layer_name(labels)
    index = {c: i for i, c in enumerate(classes)}
    class_ids = np.array([index[c] for c in labels["class"].astype(str)], dtype=np.int64)
    placed = np.zeros(len(labels), dtype=bool)
    out = []
    for grid in grids:
        if grid.crs is None:
            raise LabelError(
                f"{grid.paths[0]}: raster has no CRS, so map labels cannot be "
                "placed on it; assign one to the raster"
            )
        boxes, on_grid = boxes_on_grid(labels, grid)
        placed |= on_grid
        out.append(GridLabels(grid, boxes[on_grid], class_ids[on_grid]))
    outside = int((~placed).sum())
    if not placed.any():
        raise LabelError(
            f"{name}: none of its {len(labels)} labels overlaps the input raster(s); check "
            "that labels and imagery cover the same area and that both CRSs are right"
        )
    if outside and warn_outside:
        log.warning(
            "%s: %d of %d labels lie outside every input raster and are ignored",
            name,
            outside,
            len(labels),
        )
    return out


# --- chip folders -------------------------------------------------------------------


@dataclass(frozen=True)
class ChipLabels:
    """One labelled chip image from a VOC folder, a COCO file or a YOLO folder.

    Attributes:
        image: the image file.
        boxes: float64 [N, 4], ``xyxy`` pixel-edge coordinates of the image.
        classes: class name of each box.
    """

    image: Path
    boxes: np.ndarray
    classes: tuple[str, ...]


def read_voc_folder(folder: str | os.PathLike[str]) -> list[ChipLabels]:
    """Read a PASCAL VOC chip folder as ArcGIS "Export Training Data For Deep Learning"
    writes it: ``images/`` (tif, png, jpg) next to ``labels/*.xml``, matched by file stem.

    Box coordinates are read as pixel-edge coordinates, as ArcGIS writes them (0-based,
    possibly fractional). Classic VOC files use 1-based pixel indices instead; for those
    every box is off by one pixel up-left, which training tolerates but is worth knowing.
    Images without an XML file are negative chips; XML files without an image are skipped
    with a warning.

    Raises:
        InputError: ``folder`` has no ``images/`` or ``labels/`` sub-folder, or no images.
        LabelError: an XML file cannot be parsed or a box is malformed.
    """
    folder = Path(folder)
    images_dir, labels_dir = folder / "images", folder / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise InputError(
            f"{folder}: not a VOC chip folder; it needs images/ and labels/ "
            "sub-folders (ArcGIS 'Export Training Data', PASCAL_VOC_rectangles)"
        )
    images = {
        p.stem: p
        for p in sorted(images_dir.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    }
    if not images:
        raise InputError(f"{images_dir}: holds no chip images ({', '.join(IMAGE_SUFFIXES)})")
    xmls = {p.stem: p for p in sorted(labels_dir.glob("*.xml"))}
    orphans = sorted(set(xmls) - set(images))
    if orphans:
        log.warning(
            "%s: %d label file(s) without a matching image ignored (e.g. %s.xml)",
            labels_dir,
            len(orphans),
            orphans[0],
        )
    chips = []
    for stem, image in images.items():
        if stem in xmls:
            boxes, classes = _parse_voc(xmls[stem])
        else:
            boxes, classes = np.zeros((0, 4)), ()
        chips.append(ChipLabels(image, boxes, classes))
    return chips


def _parse_voc(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise LabelError(f"{path}: not a readable VOC XML file ({exc})") from None
    boxes, classes = [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bnd = obj.find("bndbox")
        try:
            if not name or bnd is None:
                raise ValueError
            box = [float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise LabelError(
                f"{path}: an <object> lacks a <name> or a numeric <bndbox> (xmin, ymin, xmax, ymax)"
            ) from None
        boxes.append(box)
        classes.append(name)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), tuple(classes)


def read_coco(
    path: str | os.PathLike[str], *, image_root: str | os.PathLike[str] | None = None
) -> list[ChipLabels]:
    """Read a COCO detection file (``images``, ``annotations`` with ``bbox`` [x, y, w, h]
    in pixel-edge coordinates, ``categories``).

    Image ``file_name`` values are resolved against ``image_root`` (default: the JSON's
    folder, then its ``images/`` sub-folder). Images without annotations are negatives.

    Raises:
        InputError: the file is missing or an image file cannot be found.
        LabelError: the JSON is not a COCO detection file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; check the path") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LabelError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise LabelError(
            f"{path}: not a COCO detection file (needs 'images', 'annotations' "
            "and 'categories' lists)"
        )
    roots = [Path(image_root)] if image_root else [path.parent, path.parent / "images"]
    try:
        names = {c["id"]: str(c["name"]) for c in data["categories"]}
        files = {im["id"]: str(im["file_name"]) for im in data["images"]}
        per_image: dict = {i: ([], []) for i in files}
        for ann in data["annotations"]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes, classes = per_image[ann["image_id"]]
            boxes.append([x, y, x + w, y + h])
            classes.append(names[ann["category_id"]])
    except (KeyError, TypeError, ValueError):
        raise LabelError(
            f"{path}: malformed COCO content (every image needs id and "
            "file_name, every annotation image_id, category_id and a 4-number "
            "bbox that refer to listed images and categories)"
        ) from None
    chips = []
    for image_id, file_name in files.items():
        image = next((r / file_name for r in roots if (r / file_name).is_file()), None)
        if image is None:
            raise InputError(
                f"{path}: image {file_name!r} not found under "
                f"{' or '.join(str(r) for r in roots)}; pass the image folder"
            )
        boxes, classes = per_image[image_id]
        chips.append(
            ChipLabels(image, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), tuple(classes))
        )
    return chips


# --- YOLO folders (Ultralytics, Roboflow) ---------------------------------------------

YOLO_YAML_FILES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")
YOLO_CLASSES_FILE = "classes.txt"
# Exporters round boxes that touch the image edge a little past it; anything further out
# is not a normalised coordinate (usually pixels written by mistake).
_NORMALISED_SLACK = 0.05


@dataclass(frozen=True)
class _YoloSplit:
    """One image folder of a YOLO dataset and the label folder its files pair with."""

    name: str
    images: Path
    labels: Path


def _split_rank(name: str) -> int:
    """Train first, then validation, then test: the order chips are handed to training."""
    lowered = name.lower()
    if lowered.startswith("val"):
        return 1
    if lowered.startswith("test"):
        return 2
    return 0


def _yolo_splits(folder: Path) -> list[_YoloSplit]:
    """Image folders in both layouts: ``images/[split/]`` beside ``labels/[split/]``
    (Ultralytics) and ``split/images`` beside ``split/labels`` (Roboflow)."""
    splits = []
    top = folder / "images"
    if top.is_dir():
        splits.append(_YoloSplit("", top, folder / "labels"))
        splits += [
            _YoloSplit(d.name, d, folder / "labels" / d.name) for d in top.iterdir() if d.is_dir()
        ]
    splits += [
        _YoloSplit(d.name, d / "images", d / "labels")
        for d in folder.iterdir()
        if d.is_dir() and d.name not in ("images", "labels") and (d / "images").is_dir()
    ]
    return sorted(splits, key=lambda s: (_split_rank(s.name), s.name))


def _label_files(labels_dir: Path) -> dict[str, Path]:
    """Label files of a folder by stem (labelImg's ``classes.txt`` is not one)."""
    if not labels_dir.is_dir():
        return {}
    return {
        p.stem: p
        for p in sorted(labels_dir.glob("*.txt"))
        if p.name != YOLO_CLASSES_FILE and p.is_file()
    }


def is_yolo_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` looks like a YOLO dataset: a ``data.yaml`` or ``*.txt`` label
    files in a label folder of either layout :func:`read_yolo` reads."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if any((folder / name).is_file() for name in YOLO_YAML_FILES):
        return True
    return any(_label_files(s.labels) for s in _yolo_splits(folder))


def read_yolo(folder: str | os.PathLike[str]) -> list[ChipLabels]:
    """Read a YOLO detection folder as Ultralytics uses it or Roboflow exports it.

    Layouts (image files: tif, png, jpg; each paired with the ``.txt`` of the same stem
    in the matching label folder):

    - Ultralytics: ``images/{train,val,test}/`` + ``labels/{train,val,test}/``, or flat
      ``images/`` + ``labels/``;
    - Roboflow "YOLOv5/v8/v11 PyTorch": ``{train,valid,test}/images/`` +
      ``{train,valid,test}/labels/``.

    The ``train``/``val`` paths inside ``data.yaml`` are not used (Roboflow's point
    outside the folder); the layout decides.

    Each label line is ``class cx cy w h`` (centre and size, normalised to 0-1 by the
    image width and height) or a segmentation polygon ``class x1 y1 x2 y2 ... xn yn``
    (normalised, at least 3 points), read as its bounding box. Boxes are returned in
    pixel-edge coordinates of the image, whose size is read from the file.

    Class names come from ``names:`` in ``data.yaml`` (or ``dataset.yaml``), a list or
    an ``{id: name}`` mapping; without one, from a ``classes.txt`` (one name per line,
    line *i* is class *i*) in the folder or a label folder; without either, a class is
    named by its id (``"0"``, ``"1"``...).

    An empty label file, or an image without one, is a negative chip; an image folder
    without any label folder is skipped with a warning (an unlabelled test split must not
    train as background); label files without an image are counted in one warning.

    Chips come split by split, train first, then val/valid, then test (other split
    folders count as train), each sorted by file name. The order matters: chip folders
    give their last chips to validation (:func:`geodetect.train.split.plan_split`), so
    validation chips tend to be the exporter's own validation images.

    Returns:
        One :class:`ChipLabels` per image; boxes float64 [N, 4] ``xyxy`` pixel-edge.

    Raises:
        InputError: ``folder`` is missing or has no YOLO layout with label files.
        LabelError: ``data.yaml`` has no usable ``names``, or a label line is malformed
            (the message names the file and line).
        RasterError: an image with labels cannot be read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder; give the YOLO dataset folder")
    splits = _yolo_splits(folder)
    names, names_source = _yolo_class_names(folder, splits)
    chips: list[ChipLabels] = []
    orphans: list[Path] = []
    label_count = 0
    for split in splits:
        images = sorted(
            p for p in split.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not images:
            continue
        if not split.labels.is_dir():
            log.warning(
                "%s: no label folder %s; its %d image(s) are skipped",
                split.images,
                split.labels,
                len(images),
            )
            continue
        texts = _label_files(split.labels)
        label_count += len(texts)
        stems = {p.stem for p in images}
        orphans += [path for stem, path in texts.items() if stem not in stems]
        for image in images:
            text = texts.get(image.stem)
            if text is None:
                chips.append(ChipLabels(image, np.zeros((0, 4)), ()))
            else:
                boxes, classes = _parse_yolo(text, image, names, names_source)
                chips.append(ChipLabels(image, boxes, classes))
    if label_count == 0:
        raise InputError(
            f"{folder}: not a YOLO folder (no .txt label files found); expected images/ + "
            "labels/ (Ultralytics, flat or with train/ val/ test/ sub-folders) or "
            "train/images/ + train/labels/ (Roboflow YOLO export), each image with a "
            ".txt file of the same name"
        )
    if orphans:
        log.warning(
            "%s: %d label file(s) without a matching image ignored (e.g. %s)",
            folder,
            len(orphans),
            orphans[0].relative_to(folder),
        )
    return chips


def _yolo_class_names(
    folder: Path, splits: Sequence[_YoloSplit]
) -> tuple[dict[int, str] | None, str]:
    """Class names by id, and where they came from (for messages); None: use the ids."""
    for file_name in YOLO_YAML_FILES:
        path = folder / file_name
        if path.is_file():
            return _read_yaml_names(path), file_name
    candidates = [folder / YOLO_CLASSES_FILE, folder / "labels" / YOLO_CLASSES_FILE]
    candidates += [s.labels / YOLO_CLASSES_FILE for s in splits]
    for path in candidates:
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise LabelError(f"{path}: not a readable class list ({exc})") from None
            names = [line.strip() for line in lines if line.strip()]
            return dict(enumerate(names)), str(path.relative_to(folder))
    return None, ""


def _read_yaml_names(path: Path) -> dict[int, str]:
    """``names:`` of a YOLO ``data.yaml`` (list or ``{id: name}`` mapping) by class id."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: not a readable YAML file ({exc})") from None
    except yaml.YAMLError as exc:
        raise LabelError(f"{path}: not a readable YAML file ({_yaml_problem(exc)})") from None
    names = data.get("names") if isinstance(data, dict) else None
    try:
        if isinstance(names, list) and names:
            return {i: str(name) for i, name in enumerate(names)}
        if isinstance(names, dict) and names:
            return {int(key): str(name) for key, name in names.items()}
    except (TypeError, ValueError):
        pass
    raise LabelError(
        f"{path}: has no usable 'names:' (a list of class names, or a mapping of integer "
        "class ids to names); add e.g. names: ['pool']"
    )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's complaint on one line: where and what, without its quoted snippet."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _parse_yolo(
    path: Path,
    image: Path,
    names: dict[int, str] | None,
    names_source: str,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Boxes (float64 [N, 4] pixel-edge ``xyxy`` of ``image``) and class names of one
    YOLO label file."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: not a readable YOLO label file ({exc})") from None
    boxes, classes = [], []
    width = height = None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            class_id, xs, ys = _yolo_object(fields, names, names_source)
        except ValueError as exc:
            raise LabelError(f"{path} line {number}: {exc}") from None
        if width is None:
            info = scene_info(image, allow_no_crs=True)
            width, height = info.width, info.height
        boxes.append([xs.min() * width, ys.min() * height, xs.max() * width, ys.max() * height])
        classes.append(names[class_id] if names is not None else str(class_id))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), tuple(classes)


def _yolo_object(
    fields: Sequence[str], names: dict[int, str] | None, names_source: str
) -> tuple[int, np.ndarray, np.ndarray]:
    """Class id and normalised x and y coordinates (box corners or polygon vertices) of
    one YOLO label line split into fields.

    Raises:
        ValueError: the line is malformed; the message says what is wrong and the fix.
    """
    values = []
    for field in fields:
        try:
            value = float(field)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(
                f"{field!r} is not a number; a YOLO label line holds only numbers: a class "
                "id, then normalised coordinates"
            )
        values.append(value)
    if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
        raise ValueError(
            "expected 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 ...' (at least 3 "
            f"points), got {len(values)} numbers; write one object per line"
        )
    if not values[0].is_integer() or values[0] < 0:
        raise ValueError(
            f"class id {fields[0]!r} is not a whole number >= 0; the first number is the "
            "class index (0, 1, 2...)"
        )
    class_id = int(values[0])
    if names is not None and class_id not in names:
        known = ", ".join(f"{k}: {v}" for k, v in sorted(names.items())[:10])
        raise ValueError(
            f"class id {class_id} is not in the class names of {names_source} ({known}); "
            f"fix the id or add the class to {names_source}"
        )
    coords = np.asarray(values[1:])
    outside = (coords < -_NORMALISED_SLACK) | (coords > 1 + _NORMALISED_SLACK)
    if outside.any():
        raise ValueError(
            f"coordinate {fields[1 + int(np.argmax(outside))]} is outside 0-1; YOLO "
            "coordinates are normalised by the image width and height (divide pixel "
            "coordinates by them)"
        )
    if len(coords) > 4:
        return class_id, coords[0::2], coords[1::2]
    cx, cy, w, h = coords
    if w < 0 or h < 0:
        raise ValueError("the box width or height is negative; w and h are sizes >= 0")
    return class_id, np.array([cx - w / 2, cx + w / 2]), np.array([cy - h / 2, cy + h / 2])


def chip_grid_of(image: str | os.PathLike[str]) -> MosaicGrid:
    """A one-file mosaic grid over a chip image (georeferenced or not)."""
    info = scene_info(image, allow_no_crs=True)
    return MosaicGrid(info.grid, (Member(info, 0, 0),), bands=tuple(info.data_bands))


def chips_on_grids(chips: Sequence[ChipLabels], classes: Sequence[str]) -> list[GridLabels]:
    """Each chip image as its own grid with its boxes (class names mapped to indices)."""
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for chip in chips:
        boxes = np.asarray(chip.boxes, dtype=np.float64).reshape(-1, 4)
        bad = (
            ~np.isfinite(boxes).all(axis=1)
            | (boxes[:, 2] <= boxes[:, 0])
            | (boxes[:, 3] <= boxes[:, 1])
        )
        if bad.any():
            log.warning("%s: %d empty or inverted box(es) ignored", chip.image, int(bad.sum()))
        ids = np.array([index[c] for c in chip.classes], dtype=np.int64)
        out.append(GridLabels(chip_grid_of(chip.image), boxes[~bad], ids[~bad]))
    if not any(len(g) for g in out):
        raise LabelError("the chip folder holds no labelled objects; export chips with labels")
    return out


def chip_class_names(chips: Sequence[ChipLabels]) -> list[str]:
    """Sorted class names used by a list of labelled chips."""
    return sorted({c for chip in chips for c in chip.classes})


def largest_side(boxes: np.ndarray) -> float:
    """Longest box side in pixels (0 for no boxes)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return 0.0
    return float(max(np.max(boxes[:, 2] - boxes[:, 0]), np.max(boxes[:, 3] - boxes[:, 1])))


__all__ = [
    "ChipLabels",
    "GridLabels",
    "chip_class_names",
    "chip_grid_of",
    "chips_on_grids",
    "class_names",
    "is_yolo_folder",
    "labels_on_grids",
    "largest_side",
    "map_to_pixel_boxes",
    "read_coco",
    "read_labels",
    "read_voc_folder",
    "read_yolo",
]
