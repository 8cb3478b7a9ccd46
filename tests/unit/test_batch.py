"""StudyBatch (scripts/data/batch.py): the up-front check of every study, going on past a failed one, skip_done."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import pytest
from test_bad_inputs import write_study

from scripts.data import SaveStudyLabeld, StudyBatch, list_studies, skipped_folders
from scripts.data.batch import FAILED_KEY
from scripts.errors import CSTMInputError
from scripts.metrics import CardiacOutputsd


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """good_a, good_b; bad (not a NIfTI), no_annotation (no label_ed), unzipped (image.nii), .snapshot (hidden)."""
    root = tmp_path / "data"
    for name in ("good_a", "good_b", "bad", "no_annotation"):
        write_study(root / name, label_ed=name != "no_annotation")
    (root / "bad" / "image.nii.gz").write_bytes(b"not a NIfTI file" * 100)
    shutil.copytree(root / "good_a", root / "unzipped")
    nib.save(nib.load(root / "unzipped" / "image.nii.gz"), root / "unzipped" / "image.nii")
    (root / "unzipped" / "image.nii.gz").unlink()
    shutil.copytree(root / "good_a", root / ".snapshot")
    return root


def make_batch(root: Path, out: Path | None = None, **kwargs) -> StudyBatch:
    writers = [SaveStudyLabeld("pred", out), CardiacOutputsd("pred", out, pictures=False)] if out else []
    return StudyBatch(list_studies(root, check=False), root, transform=lambda item: item, writers=writers, **kwargs)


def test_bad_studies_are_listed_before_the_run_and_passed_over(dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    batch = make_batch(dataset)
    with caplog.at_level(logging.INFO):
        todo = batch.screen()
    assert [s["study"] for s in todo] == ["good_a", "good_b"]
    assert batch.screen() is todo  # screened once
    assert list(batch.failed) == [str(dataset / n) for n in ("bad", "no_annotation", "unzipped")]
    assert "image.nii.gz: cannot be read as NIfTI" in batch.failed[str(dataset / "bad")]
    assert batch.failed[str(dataset / "no_annotation")].startswith("no annotation: neither annotation.nii.gz")
    assert "not a study: no image.nii.gz or dicom/ (it has image.nii" in batch.failed[str(dataset / "unzipped")]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bad study")]
    assert [line.split(":")[0] for line in lines] == [
        f"bad study {dataset / n}" for n in ("bad", "no_annotation", "unzipped")
    ]
    assert ".snapshot" not in caplog.text  # a hidden folder is not a study
    assert [f for f, _ in skipped_folders(dataset, [Path(s["study_dir"]) for s in batch.studies])] == [
        dataset / "unzipped"
    ]


def test_on_error_stop_raises_the_first_bad_study(dataset: Path) -> None:
    with pytest.raises(CSTMInputError, match=r"bad/image.nii.gz: cannot be read as NIfTI"):
        make_batch(dataset, on_error="stop").screen()


def test_a_single_bad_study_raises_its_own_error(tmp_path: Path) -> None:
    write_study(tmp_path / "study", info={"ed": 9, "es": 2})
    with pytest.raises(CSTMInputError, match=r"study/info.json: ed=9 is outside the 5 phases"):
        make_batch(tmp_path / "study").screen()


def test_skip_done_skips_studies_whose_outputs_all_exist(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    for name, files in (
        ("good_a", ("label_4d.nii.gz", "volumes.csv", "cardiac_function.json")),
        ("good_b", ("label_4d.nii.gz",)),
    ):  # good_b: interrupted after its label map
        (out / name).mkdir(parents=True)
        for f in files:
            (out / name / f).write_text("done")
    assert [s["study"] for s in make_batch(dataset, out).screen()] == ["good_a", "good_b"]
    batch = make_batch(dataset, out, skip_done=True)
    with caplog.at_level(logging.INFO):
        assert [s["study"] for s in batch.screen()] == ["good_b"]
    assert batch.done == ["good_a"] and "good_a: skipped, done already" in caplog.text
    assert "good_b: not done, 1 of its 3 outputs exist (missing volumes.csv, cardiac_function.json)" in caplog.text


def test_run_study_records_a_failure_and_goes_on(dataset: Path) -> None:
    class Engine:
        def _iteration(self, engine: object, batch: dict) -> dict:
            if batch["study"] == ["good_b"]:
                raise RuntimeError("CUDA out of memory")
            return {"pred": 1}

    batch, engine = make_batch(dataset), Engine()
    batch.screen()
    assert batch.run_study(engine, {"study": ["good_a"], "study_dir": [str(dataset / "good_a")]}) == {"pred": 1}
    assert batch.run_study(engine, {"study": ["good_b"], "study_dir": [str(dataset / "good_b")]}) is None
    assert batch.failed[str(dataset / "good_b")] == "RuntimeError: CUDA out of memory"
    marker = {"study": ["x"], "study_dir": [str(dataset / "x")], FAILED_KEY: ["image.nii.gz: image is constant (7.0)."]}
    assert batch.run_study(engine, marker) is None and batch.failed[str(dataset / "x")].endswith("constant (7.0).")
    with pytest.raises(
        CSTMInputError, match=r"data: 5 of 6 studies failed \(bad, good_b, no_annotation, unzipped, x\)"
    ):
        batch._raise_failures()
    stop = make_batch(dataset, on_error="stop")
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        stop.run_study(engine, {"study": ["good_b"], "study_dir": [str(dataset / "good_b")]})


def test_load_turns_a_failure_into_a_marker(dataset: Path) -> None:
    def transform(item: dict) -> dict:
        raise RuntimeError("applying transform") from CSTMInputError(
            Path(item["study_dir"]) / "image.nii.gz", "image contains NaN or Inf values"
        )

    item = {"study": "good_a", "study_dir": str(dataset / "good_a"), "image": "..."}
    batch = StudyBatch([item], dataset, transform)
    assert batch.load(item) == {
        "study": "good_a",
        "study_dir": item["study_dir"],
        FAILED_KEY: "image.nii.gz: image contains NaN or Inf values.",
    }
    with pytest.raises(RuntimeError):
        StudyBatch([item], dataset, transform, on_error="stop").load(item)


def test_run_skips_the_evaluator_when_every_study_is_done(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for name in ("good_a", "good_b"):
        (out / name).mkdir(parents=True)
        for f in ("label_4d.nii.gz", "volumes.csv", "cardiac_function.json"):
            (out / name / f).write_text("done")
    for name in ("bad", "no_annotation", "unzipped"):
        shutil.rmtree(dataset / name)

    class Evaluator:
        def run(self) -> None:
            raise AssertionError("nothing to run")

    make_batch(dataset, out, skip_done=True).run(Evaluator())  # no error: nothing failed, nothing to do
