"""The model file: exact round trip; hostile, foreign and damaged files refused unrun."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from geodetect.errors import ModelFileError
from geodetect.model import build_retinanet, load_model, read_spec, save_model


@pytest.fixture
def saved(tmp_path, tiny_spec):
    torch.manual_seed(0)
    model = build_retinanet(tiny_spec, pretrained="none").eval()
    path = save_model(model, tiny_spec, tmp_path / "tiny.model")
    return model, path


def test_round_trip_gives_identical_outputs(saved, tiny_spec):
    model, path = saved
    loaded = load_model(path)
    assert loaded.spec == tiny_spec
    x = torch.randn(2, 3, 64, 64)
    model.score_thresh = loaded.model.score_thresh = 0.0
    with torch.inference_mode():
        a, b = model(x), loaded.model(x)
    assert len(a[0]["scores"]) > 0
    for ra, rb in zip(a, b, strict=True):
        assert torch.equal(ra["boxes"], rb["boxes"]) and torch.equal(ra["scores"], rb["scores"])
    assert len(loaded.model_id) == 12


def test_existing_model_not_overwritten(saved, tiny_spec):
    model, path = saved
    before = path.read_bytes()
    with pytest.raises(Exception, match="already exists"):
        save_model(model, tiny_spec, path)
    assert path.read_bytes() == before


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    for name, writer in [
        ("evil.pkl.model", lambda f: pickle.dump(evil, f)),
        ("evil.pt", lambda f: torch.save({"x": evil}, f)),
    ]:
        path = tmp_path / name
        with open(path, "wb") as f:
            writer(f)
        with pytest.raises(ModelFileError, match="pickle"):
            load_model(path)
        assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "random", "empty", "bad_json"])
def test_damaged_files_refused(saved, tmp_path, damage):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / f"{damage}.model"
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        bad.write_bytes(os.urandom(5000))
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}" + b"\0" * 64)
    with pytest.raises(ModelFileError) as info:
        load_model(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_foreign_safetensors_refused(tmp_path, tiny_spec):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, plain)
    with pytest.raises(ModelFileError, match="without geodetect metadata"):
        read_spec(plain)
    # metadata claims one architecture, weights are another's
    lying = tmp_path / "lying.model"
    save_file({"w": torch.zeros(3)}, lying, metadata={"geodetect": tiny_spec.to_json()})
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(lying)
    odd = tmp_path / "odd.model"
    meta = json.loads(tiny_spec.to_json()) | {"backbone": "vgg"}
    save_file({"w": torch.zeros(3)}, odd, metadata={"geodetect": json.dumps(meta)})
    with pytest.raises(ModelFileError, match="unknown backbone"):
        read_spec(odd)


def test_non_rgb_input_adapts_first_conv(tiny_spec):
    from dataclasses import replace

    spec = replace(
        tiny_spec, band_mean=[1.0] * 4, band_std=[1.0] * 4, band_names=["r", "g", "b", "nir"]
    )
    model = build_retinanet(spec, pretrained="none").eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 4, 64, 64))
    assert model.backbone.body.conv1.in_channels == 4 and len(out) == 1


def test_calibration_chips_travel_with_the_weights(saved, tiny_spec, tmp_path):
    """Training chips kept for int8 calibration come back as written, beside weights
    that load as before; chips of the wrong band count are refused as tampering."""
    model, _ = saved
    chips = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    path = save_model(model, tiny_spec, tmp_path / "kept.model", calibration=chips)
    loaded = load_model(path)
    assert torch.equal(loaded.calibration, chips)
    assert load_model(saved[1]).calibration is None  # files without them still load
    wrong = save_model(
        model, tiny_spec, tmp_path / "wrong.model", calibration=torch.zeros((2, 4, 32, 32))
    )
    with pytest.raises(ModelFileError, match="calibration chips"):
        load_model(wrong)
