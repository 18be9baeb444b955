"""Real rasters from ../shared/rasters (skipped when that folder is absent)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from geodetect.geometry import chip_grid, owned_mask, pixel_boxes_to_map
from geodetect.io.raster import open_mosaics


def test_osbs_pixel_boxes_become_exact_map_boxes(shared_rasters):
    with open(shared_rasters / "OSBS_029.csv") as f:
        rows = list(csv.DictReader(f))
    boxes = np.array([[float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for r in rows])
    (grid,) = open_mosaics([shared_rasters / "OSBS_029.tif"])
    assert grid.crs.to_epsg() == 32617
    found = []
    # through the chip grid: each box, in the coordinates of the chip that owns it
    for chip in chip_grid(
        height=grid.height, width=grid.width, chip_size=128, overlap=48, transform=grid.transform
    ):
        local = boxes - [chip.col_off, chip.row_off, chip.col_off, chip.row_off]
        inside = (local[:, :2] >= 0).all(1) & (local[:, 2:] <= 128).all(1)
        own = owned_mask(local, chip.core) & inside
        for box, poly in zip(
            boxes[own], pixel_boxes_to_map(local[own], chip.transform), strict=True
        ):
            found.append((box, poly.bounds))
    assert len(found) >= len(boxes) * 0.8  # boxes larger than the overlap may be cut
    for (xmin, ymin, xmax, ymax), bounds in found:
        expected = (
            404211.9 + 0.1 * xmin,
            3285142.9 - 0.1 * ymax,
            404211.9 + 0.1 * xmax,
            3285142.9 - 0.1 * ymin,
        )
        assert bounds == pytest.approx(expected, abs=1e-6)
