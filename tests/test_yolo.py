"""YOLO folders (Ultralytics and Roboflow layouts) read as labelled chips, and trained on
from the command line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
from affine import Affine

from geodetect.cli import main
from geodetect.errors import InputError, LabelError
from geodetect.io.labels import LabelSource, is_yolo_folder, read_yolo
from geodetect.model import read_spec
from geodetect.train.labelled import load_labelled

from conftest import paint_boxes, write_geotiff

# Wider than high, so a swapped width and height moves every box.
WIDTH, HEIGHT = 80, 64


def write_png(path, *, width=WIDTH, height=HEIGHT, boxes=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="PNG", height=height, width=width, count=3, dtype="uint8"
    ) as dst:
        dst.write(paint_boxes(height, width, boxes))
    return path


def write_text(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def flat_folder(root, lines, *, names="names: ['pool', 'tank']\n"):
    """An Ultralytics flat folder with one image, ``a.png``, labelled by ``lines``."""
    write_png(root / "images" / "a.png")
    write_text(root / "labels" / "a.txt", lines)
    if names is not None:
        write_text(root / "data.yaml", names)
    return root


def test_boxes_land_on_pixel_edges(tmp_path):
    # cx 0.25 w 0.25 of 80 px -> x 10..30; cy 0.5 h 0.5 of 64 px -> y 16..48.
    flat_folder(tmp_path, "0 0.25 0.5 0.25 0.5\n1 0.75 0.125 0.1 0.25\n")
    (chip,) = read_yolo(tmp_path)
    assert chip.image == tmp_path / "images" / "a.png"
    np.testing.assert_allclose(chip.boxes, [[10, 16, 30, 48], [56, 0, 64, 16]], atol=1e-9)
    assert chip.classes == ("pool", "tank")
    assert chip.boxes.dtype == np.float64


def test_box_reaching_past_the_edge_is_kept_as_written(tmp_path):
    flat_folder(tmp_path, "0 0.98 0.5 0.1 0.5\n")
    (chip,) = read_yolo(tmp_path)
    np.testing.assert_allclose(chip.boxes, [[74.4, 16, 82.4, 48]])


def test_polygon_gives_its_bounding_box(tmp_path):
    # x: 0.1, 0.5, 0.375 of 80 px -> 8..40; y: 0.25, 0.125, 0.75 of 64 px -> 8..48.
    flat_folder(tmp_path, "1 0.1 0.25 0.5 0.125 0.375 0.75\n")
    (chip,) = read_yolo(tmp_path)
    np.testing.assert_allclose(chip.boxes, [[8, 8, 40, 48]], atol=1e-9)
    assert chip.classes == ("tank",)


def test_geotiff_chip_size_comes_from_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    write_geotiff(
        tmp_path / "images" / "a.tif",
        paint_boxes(32, 48, []),
        transform=Affine(0.5, 0, 1000.0, 0, -0.5, 2000.0),
    )
    write_text(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    (chip,) = read_yolo(tmp_path)
    np.testing.assert_allclose(chip.boxes, [[12, 8, 36, 24]])
    assert chip.classes == ("0",)  # no data.yaml: named by the id


def test_empty_label_files_and_unlabelled_images_are_negatives(tmp_path, caplog):
    flat_folder(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    write_png(tmp_path / "images" / "b.png")
    write_text(tmp_path / "labels" / "b.txt", "\n")
    write_png(tmp_path / "images" / "c.jpg")
    write_text(tmp_path / "labels" / "orphan1.txt", "0 0.5 0.5 0.2 0.2\n")
    write_text(tmp_path / "labels" / "orphan2.txt", "")
    with caplog.at_level(logging.WARNING, logger="geodetect"):
        chips = read_yolo(tmp_path)
    assert [c.image.name for c in chips] == ["a.png", "b.png", "c.jpg"]
    assert [len(c.boxes) for c in chips] == [1, 0, 0]
    assert chips[1].boxes.shape == (0, 4) and chips[2].classes == ()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 label file(s) without a matching image" in warnings[0]


NAME_FORMS = {
    "flow list": "names: ['pool', 'tank']\n",
    "flow list, no quotes, comment": "nc: 2\nnames: [pool, tank]  # two classes\n",
    "block list": "nc: 2\nnames:\n  - pool\n  - 'tank'\ntrain: ../train/images\n",
    "flow mapping": 'names: {0: pool, 1: "tank"}\n',
    "block mapping": "path: .\ntrain: images/train\nnames:\n  0: pool\n  1: tank\n",
    "flow list over lines": "names: [\n  'pool',\n  'tank',\n]\n",
}


@pytest.mark.parametrize("text", NAME_FORMS.values(), ids=NAME_FORMS.keys())
def test_data_yaml_names_in_list_and_mapping_forms(tmp_path, text):
    flat_folder(tmp_path, "1 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.1 0.1\n", names=text)
    (chip,) = read_yolo(tmp_path)
    assert chip.classes == ("tank", "pool")


def test_mapping_names_may_skip_ids(tmp_path):
    flat_folder(tmp_path, "3 0.5 0.5 0.2 0.2\n", names="names:\n  0: pool\n  3: spa\n")
    assert read_yolo(tmp_path)[0].classes == ("spa",)


def test_classes_txt_names_classes_without_a_data_yaml(tmp_path):
    flat_folder(tmp_path, "1 0.5 0.5 0.2 0.2\n", names=None)
    write_text(tmp_path / "labels" / "classes.txt", "pool\ntank\n")  # labelImg's place
    (chip,) = read_yolo(tmp_path)  # classes.txt is not read as an image's labels
    assert chip.classes == ("tank",)


def test_data_yaml_without_names_is_a_label_error(tmp_path):
    flat_folder(tmp_path, "0 0.5 0.5 0.2 0.2\n", names="nc: 1\ntrain: images\n")
    with pytest.raises(LabelError, match="data.yaml: has no usable 'names:'"):
        read_yolo(tmp_path)


@pytest.mark.parametrize(
    "text", ["names: ['pool', 'tank'\n", "names:\n  - pool\n - tank\n", "names: [pool]\n\t- x\n"]
)
def test_unparsable_data_yaml_is_a_one_line_label_error(tmp_path, text):
    flat_folder(tmp_path, "0 0.5 0.5 0.2 0.2\n", names=text)
    with pytest.raises(LabelError) as info:
        read_yolo(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'data.yaml'}: not a readable YAML file (")
    assert "\n" not in message


def test_data_yaml_with_python_tags_is_refused_not_executed(tmp_path):
    # safe_load only: a tag that would build a Python object is a YAML error.
    text = "names: !!python/object/apply:os.system ['echo hacked']\n"
    flat_folder(tmp_path, "0 0.5 0.5 0.2 0.2\n", names=text)
    with pytest.raises(LabelError, match="data.yaml: not a readable YAML file"):
        read_yolo(tmp_path)


def roboflow_folder(root):
    """A Roboflow "YOLOv8 PyTorch" export: split folders, each with images/ and labels/."""
    for split, stems in (("train", ["b", "a"]), ("valid", ["c"]), ("test", ["d"])):
        for stem in stems:
            write_png(root / split / "images" / f"{stem}_jpg.rf.123.png", boxes=[(10, 16, 30, 48)])
            write_text(root / split / "labels" / f"{stem}_jpg.rf.123.txt", "0 0.25 0.5 0.25 0.5\n")
    write_text(
        root / "data.yaml",
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
        "nc: 1\nnames: ['pool']\n\nroboflow:\n  workspace: me\n  project: pools\n"
        "  version: 3\n  license: CC BY 4.0\n  url: https://universe.roboflow.com/me/pools/3\n",
    )
    write_text(root / "README.roboflow.txt", "exported from roboflow\n")
    return root


def test_roboflow_layout_is_read_train_then_valid_then_test(tmp_path):
    chips = read_yolo(roboflow_folder(tmp_path))
    assert [c.image.relative_to(tmp_path).parts[0] for c in chips] == [
        "train",
        "train",
        "valid",
        "test",
    ]
    assert [c.image.name[0] for c in chips] == ["a", "b", "c", "d"]  # sorted in a split
    for chip in chips:
        np.testing.assert_allclose(chip.boxes, [[10, 16, 30, 48]])
        assert chip.classes == ("pool",)


def test_ultralytics_split_layout_is_read_train_then_val_then_test(tmp_path):
    for split in ("test", "val", "train"):
        write_png(tmp_path / "images" / split / f"{split}.png")
        write_text(tmp_path / "labels" / split / f"{split}.txt", "0 0.5 0.5 0.2 0.2\n")
    write_text(tmp_path / "data.yaml", "path: .\ntrain: images/train\nnames:\n  0: pool\n")
    chips = read_yolo(tmp_path)
    assert [c.image.stem for c in chips] == ["train", "val", "test"]


def test_split_without_a_label_folder_is_skipped(tmp_path, caplog):
    roboflow_folder(tmp_path)
    for path in (tmp_path / "test" / "labels").iterdir():
        path.unlink()
    (tmp_path / "test" / "labels").rmdir()
    with caplog.at_level(logging.WARNING, logger="geodetect"):
        chips = read_yolo(tmp_path)
    assert [c.image.relative_to(tmp_path).parts[0] for c in chips] == ["train", "train", "valid"]
    assert "its 1 image(s) are skipped" in caplog.text


def test_load_labelled_reads_a_yolo_folder_as_ordered_chips(tmp_path):
    labelled = load_labelled(LabelSource.of(yolo=roboflow_folder(tmp_path)))
    assert labelled.classes == ["pool"] and labelled.ordered
    assert labelled.source == {"yolo": str(tmp_path)}
    assert labelled.num_objects == 4 and labelled.grids[0].grid.width == WIDTH
    with pytest.raises(InputError, match="--yolo DIR"):
        LabelSource.of(yolo=tmp_path, voc=tmp_path)


BAD_LINES = {
    "4 numbers": ("0 0.5 0.5 0.2", "got 4 numbers"),
    "6 numbers": ("0 0.1 0.1 0.2 0.2 0.3", "got 6 numbers"),
    "not a number": ("0 0.5 abc 0.2 0.2", "'abc' is not a number"),
    "pixel coordinates": ("0 40 32 16 16", "coordinate 40 is outside 0-1"),
    "fractional class": ("0.5 0.5 0.5 0.2 0.2", "class id '0.5' is not a whole number"),
    "negative size": ("0 0.5 0.5 -0.02 0.2", "width or height is negative"),
}


@pytest.mark.parametrize("line, problem", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_malformed_line_names_file_and_line(tmp_path, line, problem):
    write_png(tmp_path / "images" / "train" / "a.png")
    write_text(tmp_path / "labels" / "train" / "a.txt", f"0 0.5 0.5 0.2 0.2\n\n{line}\n")
    with pytest.raises(LabelError) as info:
        read_yolo(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'labels' / 'train' / 'a.txt'} line 3: ")
    assert problem in message


def test_class_id_outside_names_is_a_clear_error(tmp_path):
    flat_folder(tmp_path, "0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n")
    with pytest.raises(LabelError) as info:
        read_yolo(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'labels' / 'a.txt'} line 2: class id 2 is not in the class names of "
        "data.yaml (0: pool, 1: tank); fix the id or add the class to data.yaml"
    )


def test_folder_without_a_yolo_layout_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        read_yolo(tmp_path / "missing")
    write_png(tmp_path / "images" / "a.png")
    write_text(tmp_path / "labels" / "a.xml", "<annotation/>")  # a VOC folder
    with pytest.raises(InputError, match=r"not a YOLO folder .*images/ \+ labels/"):
        read_yolo(tmp_path)
    assert not is_yolo_folder(tmp_path)
    write_text(tmp_path / "labels" / "a.txt", "")
    assert is_yolo_folder(tmp_path)


def test_cli_trains_on_a_yolo_folder(tmp_path):
    root = tmp_path / "pools"
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("valid", 1)):
        for i in range(count):
            x, y = (int(v) for v in rng.integers(8, 40, size=2))
            boxes = [(x, y, x + 16, y + 12), (x + 30, y + 30, x + 40, y + 46)]
            write_png(root / split / "images" / f"{i}.png", width=96, height=96, boxes=boxes)
            lines = [
                f"{c} {(x1 + x2) / 192} {(y1 + y2) / 192} {(x2 - x1) / 96} {(y2 - y1) / 96}"
                for c, (x1, y1, x2, y2) in enumerate(boxes)
            ]
            write_text(root / split / "labels" / f"{i}.txt", "\n".join(lines) + "\n")
    write_text(root / "data.yaml", "nc: 2\nnames: ['pool', 'tank']\n")
    model = tmp_path / "m.model"
    main(
        [
            "train",
            "--yolo",
            str(root),
            "--out",
            str(model),
            "--epochs",
            "1",
            "--chip-size",
            "64",
            "--batch-size",
            "4",
            "--start",
            "none",
            "-q",
        ]
    )
    assert model.is_file()
    assert read_spec(model).classes == ["pool", "tank"]
