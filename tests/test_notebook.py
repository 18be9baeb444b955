"""The swimming-pool notebook runs top to bottom in a kernel of this environment."""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "swimming_pools.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.notebook
def test_notebook_runs_clean(tmp_path):
    from nbclient import NotebookClient

    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    nb = nbformat.read(work / NOTEBOOK.name, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    ).execute()
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 5  # batch, LR finder, curves, results, detections map
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert errors == []
    # a minute and a half of training on a busy CI machine may find few pools: the
    # exported layers must be valid, in the mosaic's CRS and in lon/lat respectively
    layer = gpd.read_file(work / "outputs" / "pools.gpkg")
    assert layer.crs.to_epsg() == 32617
    assert {"class", "score", "area_m2", "source", "model_id"} <= set(layer.columns)
    assert gpd.read_file(work / "outputs" / "pools.geojson").crs.to_epsg() == 4326
