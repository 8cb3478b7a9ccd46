"""The automatic first frame: the initialiser's record, how the anchor is chosen, and ``--annotation`` modes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
import torch

from scripts.data import write_phantom_studies
from scripts.data.batch import check_study
from scripts.data.transforms import read_annotation
from scripts.errors import CSTMInputError
from scripts.inferers import AutoAnchord, FrameInitializer
from scripts.networks import InitializerNet, build_cstm, build_initializer_from_checkpoint, save_weights
from scripts.networks.weights import weights_record


@pytest.fixture(scope="module")
def init_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    network = InitializerNet(4, (4, 8, 8))
    path = tmp_path_factory.mktemp("init") / "init.pt"
    save_weights(network, path, weights_record(network, "initializer", 64, 1.5, "train_init.json"))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (folder,) = write_phantom_studies(
        str(tmp_path_factory.mktemp("s")), 1, seed=7, image_size=(48, 48), num_slices=5, num_phases=4
    )
    return Path(folder)


def test_initializer_rebuilds_from_its_record_and_refuses_other_weights(init_weights: Path, tmp_path: Path) -> None:
    rebuilt = build_initializer_from_checkpoint(init_weights)
    assert rebuilt.config == {"num_classes": 4, "filters": [4, 8, 8]} and rebuilt.size_multiple == 4
    cstm = build_cstm("small")
    save_weights(cstm, tmp_path / "model.pt", weights_record(cstm, "small", 192, 0.9))
    with pytest.raises(CSTMInputError, match="not an initialiser"):
        build_initializer_from_checkpoint(tmp_path / "model.pt")


def test_segment_returns_probabilities_on_the_input_grid(init_weights: Path) -> None:
    probs = FrameInitializer(init_weights).segment(torch.rand(3, 37, 50), (1.2, 1.0))
    assert probs.shape == (3, 4, 37, 50)
    assert torch.allclose(probs.sum(1), torch.ones(3, 37, 50), atol=1e-5)


def _disc_probs(num_slices: int, lv_slices: dict[int, tuple[int, float]], size: int = 32) -> torch.Tensor:
    """(Z, 4, S, S): slice z holds an LV disc of radius r drawn with probability p, elsewhere background (p 0.99)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    probs = torch.zeros(num_slices, 4, size, size)
    probs[:, 0] = 0.99
    probs[:, 1:] = 0.01 / 3
    for z, (radius, p) in lv_slices.items():
        disc = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= radius**2
        probs[z, 3][disc], probs[z, 0][disc] = p, (1 - p) / 3
        probs[z, 1][disc] = probs[z, 2][disc] = (1 - p) / 3
    return probs


def test_anchor_is_the_most_confident_middle_slice_of_the_largest_lv_phase(
    init_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    initializer = FrameInitializer(init_weights)
    image = torch.rand(32, 32, 7, 3)
    by_phase = {  # LV in slices 1-5 at every phase; largest in phase 2; slice 1 (basal, outside the middle) surest
        t: _disc_probs(7, {z: (4 + 2 * (t == 2), 0.97 if z == 1 else (0.9 if z == 4 else 0.7)) for z in range(1, 6)})
        for t in range(3)
    }

    def segment(frames: torch.Tensor, spacing: tuple[float, float]) -> torch.Tensor:
        for t in range(3):  # which phase (or the middle slice at every phase) these frames are
            if frames.shape[0] == 7 and torch.equal(frames, image[:, :, :, t].permute(2, 0, 1)):
                return by_phase[t]
        assert torch.equal(frames, image[:, :, 3].permute(2, 0, 1))
        return torch.stack([by_phase[t][3] for t in range(3)])

    monkeypatch.setattr(initializer, "segment", segment)
    found = initializer.anchor(image, (1.0, 1.0))
    assert found["frame"] == (4, 2) and found["phase_source"] == "largest LV area"
    assert found["confidence"] == pytest.approx(0.9, abs=1e-4)  # the mean largest probability over its LV disc
    assert initializer.anchor(image, (1.0, 1.0), ed=0)["frame"] == (4, 0)  # the phase info.json gives
    assert int((found["label"] == 3).sum()) == int((by_phase[2][4].argmax(0) == 3).sum())
    monkeypatch.setattr(initializer, "segment", lambda frames, spacing: _disc_probs(frames.shape[0], {}))
    with pytest.raises(ValueError, match="no LV"):
        initializer.anchor(image, (1.0, 1.0))


def _without_annotation(study: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "image.nii.gz").symlink_to(study / "image.nii.gz")
    info = json.loads((study / "info.json").read_text())
    (folder / "info.json").write_text(json.dumps({k: info[k] for k in ("ed", "es")}))
    return folder


def test_annotation_modes_of_read_annotation_and_the_screening(study: Path, tmp_path: Path) -> None:
    bare = _without_annotation(study, tmp_path)
    image = nib.load(str(study / "image.nii.gz"))
    info = json.loads((bare / "info.json").read_text())
    with pytest.raises(CSTMInputError, match="no annotation"):
        read_annotation(bare, info, image.shape, image.affine, annotation="required")
    with pytest.raises(CSTMInputError, match="no annotation"):
        check_study({"image": str(bare / "image.nii.gz"), "study_dir": str(bare)})
    check_study({"image": str(bare / "image.nii.gz"), "study_dir": str(bare)}, "if_missing")
    missing = read_annotation(bare, info, image.shape, image.affine, annotation="if_missing")
    assert missing["anchor_source"] is None and missing["anchor_frames"].shape == (0, 2)
    given = read_annotation(study, info, image.shape, image.affine, annotation="if_missing")
    assert given["anchor_source"] == "label_ed.nii.gz" and given["anchor_frames"].shape == (1, 2)
    forced = read_annotation(study, info, image.shape, image.affine, annotation="auto")
    assert forced["anchor_source"] is None


def test_auto_anchord_fills_in_only_what_is_missing(study: Path, tmp_path: Path, init_weights: Path) -> None:
    initializer = FrameInitializer(init_weights)
    anchor = {"frame": (2, 1), "label": torch.full((48, 48), 3, dtype=torch.uint8), "confidence": 0.91234}
    initializer.anchor = lambda image, spacing, ed: {**anchor, "phase_source": f"ed {ed}"}
    item = {"image": torch.rand(1, 48, 48, 5, 4), "study_dir": str(study), "image_spacing": torch.tensor([1.0, 1.0])}
    given = {**item, "anchor_source": "annotation.nii.gz", "anchor_frames": torch.tensor([[0, 0]])}
    assert AutoAnchord("image", initializer)(given)["anchor_frames"].tolist() == [[0, 0]]
    made = AutoAnchord("image", initializer)({**item, "anchor_source": None})
    assert made["anchor_frames"].tolist() == [[2, 1]] and made["annotation_slice"] == 2
    assert made["anchor_source"] == "generated" and made["anchor_labels"].shape == (1, 48, 48)
    ed = json.loads((study / "info.json").read_text())["ed"]
    assert made["generated_anchor"] == {
        "z": 2,
        "t": 1,
        "confidence": 0.9123,
        "phase_source": f"ed {ed}",
        "checkpoint": str(init_weights),
    }
    assert AutoAnchord("image", initializer, "required")({**item, "anchor_source": None})["anchor_source"] is None
    with pytest.raises(CSTMInputError, match="no initialiser weights"):
        AutoAnchord("image", FrameInitializer(tmp_path / "none.pt"))({**item, "anchor_source": None})
