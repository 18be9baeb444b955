"""The swimming-pool notebook runs top to bottom in a kernel of this environment."""

from __future__ import annotations

import geopandas as gpd
import nbformat
import pyogrio
import pytest

from geodetect.errors import InputError

from conftest import NOTEBOOKS, SAMPLE_DATA, run_notebook

NOTEBOOK = NOTEBOOKS / "swimming_pools.ipynb"
COUNTY = NOTEBOOKS / "county_workflow.ipynb"


@pytest.mark.parametrize("path", [NOTEBOOK, COUNTY], ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.notebook
@pytest.mark.slow
def test_notebook_runs_clean(swimming_notebook):
    """The notebook ran in the session's fixture (its model is the suite's sample model):
    every plot drawn, the model trained as the command line would, the layers valid."""
    from geodetect.model import load_model

    work = swimming_notebook.work
    assert len(swimming_notebook.images) >= 5  # batch, LR finder, curves, results, map
    training = load_model(work / "outputs" / "pools.model").spec.training
    assert training["steps"] == 300 and training["seed"] == 0 and training["start"] == "none"
    assert training["val_area"]["n_truth"] > 0  # the threshold chosen as `train` does
    layer = gpd.read_file(work / "outputs" / "pools.gpkg")
    assert layer.crs.to_epsg() == 32617 and len(layer) > 0
    assert {"class", "score", "area_m2", "source", "model_id"} <= set(layer.columns)
    assert gpd.read_file(work / "outputs" / "pools.geojson").crs.to_epsg() == 4326


@pytest.mark.notebook
@pytest.mark.slow
def test_county_notebook_runs_clean(sample_model, tmp_path):
    """Detect on a synthetic county, parcels against its roll, change between its
    flights, a review simulated from its truth, the estimate drawn against the true
    count, and retraining from the review: every layer written, the model's record
    holding what it learnt from the review. The notebook uses the model `make demo`
    leaves, here the suite's sample model (its own training is that model's recipe)."""
    from geodetect.io.review import read_review
    from geodetect.model import load_model

    work, images = run_notebook(COUNTY, tmp_path, demo_model=sample_model)
    assert not (work / "outputs_county" / "pools.model").exists()  # it used the given one
    assert len(images) >= 1  # the estimate against the true count
    out = work / "outputs_county"
    for name in ("old.gpkg", "new.gpkg"):
        assert "coverage" in {n for n, _ in pyogrio.list_layers(out / name)}
    items, squares, missed, _ = read_review(out / "review.gpkg")
    assert set(items["verdict"]) <= {"pool", "not_pool"} and set(squares["done"]) == {"yes"}
    counts = load_model(out / "reviewed.model").spec.training["source"]["review_counts"]
    assert counts["confirmed"] == int((items["verdict"] == "pool").sum())
    assert counts["missed"] == len(missed) and counts["squares"] == len(squares)


SAMPLE = SAMPLE_DATA / "train"


@pytest.mark.slow
def test_the_notebook_api_trains_the_model_the_command_line_trains(tmp_path, capsys):
    """The same labels, seed and steps through `geodetect train` and through
    prepare_data / RetinaNet / fit / save give the same model: the same spec (score
    threshold chosen over the validation area, NMS and second-box IoUs, chip size,
    scaling, object sizes) and the same weights."""
    import torch

    from geodetect import RetinaNet, prepare_data
    from geodetect.cli import main
    from geodetect.model import load_model

    cli_path = tmp_path / "cli.model"
    argv = ["train", str(SAMPLE / "scene.tif"), "--labels", str(SAMPLE / "truth.gpkg")]
    argv += ["--out", str(cli_path), "--steps", "40", "--seed", "3", "--start", "none", "-q"]
    # on the CPU, both: a GPU's kernels need not give the same weights twice
    argv += ["--device", "cpu", "--batch-size", "8"]
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err

    data = prepare_data(SAMPLE / "scene.tif", labels=SAMPLE / "truth.gpkg", seed=3, batch_size=8)
    model = RetinaNet(data, start="none", device="cpu")
    model.fit(steps=40, plot=False)
    nb_path = model.save(tmp_path / "notebook.model")

    cli, notebook = load_model(cli_path), load_model(nb_path)
    assert cli.spec.training["val_area"]["n_truth"] > 0  # the area threshold was chosen
    assert notebook.spec.training["val_area"] == cli.spec.training["val_area"]
    decided = {k: v for k, v in vars(cli.spec).items() if k != "training"}
    assert {k: v for k, v in vars(notebook.spec).items() if k != "training"} == decided
    for name, tensor in cli.model.state_dict().items():
        torch.testing.assert_close(notebook.model.state_dict()[name], tensor, rtol=0, atol=0)
    assert notebook.spec.training["start"] == cli.spec.training["start"] == "none"
    # the length is checked as the command line checks it, before any step
    with pytest.raises(InputError, match="--steps or --epochs"):
        model.fit(epochs=1, steps=5, plot=False)


def test_notebook_reads_arcgis_voc_chips_without_rasterio_warnings(tmp_path):
    """ArcGIS exports chips without georeferencing by design: no NotGeoreferencedWarning."""
    import warnings

    import numpy as np
    import rasterio

    from geodetect import prepare_data

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        image = rng.integers(0, 60, (3, 128, 128), dtype=np.uint8)
        image[:, 30:60, 40:80] = 220
        with rasterio.open(
            tmp_path / "images" / f"{k:09d}.png",
            "w",
            driver="PNG",
            height=128,
            width=128,
            count=3,
            dtype="uint8",
        ) as dst:
            dst.write(image)
        (tmp_path / "labels" / f"{k:09d}.xml").write_text(
            "<annotation><filename>x</filename><size><width>128</width><height>128</height>"
            "<depth>3</depth></size><object><name>pool</name><bndbox><xmin>40</xmin>"
            "<ymin>30</ymin><xmax>80</xmax><ymax>60</ymax></bndbox></object></annotation>"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = prepare_data(tmp_path)
        data.train[0]  # reading a chip opens its image
        data.show_batch(rows=1, ncols=2)
    assert data.classes == ["pool"] and len(data.train) > 0
