"""StudyBatch (scripts/data/batch.py): the up-front check of every study, going on past a failed one, skip_done,
the cohort table (scripts/data/cohort.py), the progress lines and the share of each rank; a study's outputs as one
unit (scripts/data/outputs.py)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from test_bad_inputs import write_study

import scripts.data.batch as batch_module
from scripts.data import SaveStudyLabeld, StudyBatch, list_studies, skipped_folders
from scripts.data.batch import FAILED_KEY
from scripts.data.cohort import TIMING, CohortStudy, cohort_rows, flatten_report, merge_columns
from scripts.data.outputs import (
    MANIFEST_FILE,
    OUTPUT_FOLDER_KEY,
    check_done,
    commit,
    manifest,
    new_staging,
    study_inputs,
)
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


def finish(batch: StudyBatch, study: str, content: str = "done") -> None:
    """Write every output file of ``study`` (as its writers name them) and its ``outputs.json``, as a finished earlier
    run with ``batch``'s settings left them."""
    item = next(s for s in batch.studies if s["study"] == study)
    target = batch.output_folder(study)
    staging = new_staging(target)
    for path in batch.output_files(study):
        (staging / path.name).write_text(content)
    inputs = study_inputs(item["image"], item["study_dir"])
    commit(staging, target, manifest(study, staging, inputs, batch.settings, "test"), overwrite=True)


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
    batch = make_batch(dataset, out, skip_done=True)
    finish(batch, "good_a")
    (out / "good_b").mkdir()
    (out / "good_b" / "label_4d.nii.gz").write_text("done")  # good_b: interrupted after its label map
    assert [s["study"] for s in make_batch(dataset, out).screen()] == ["good_a", "good_b"]
    with caplog.at_level(logging.INFO):
        assert [s["study"] for s in batch.screen()] == ["good_b"]
    assert batch.done == ["good_a"] and "good_a: skipped, done already" in caplog.text
    names = [p.name for p in batch.output_files("good_b")]
    assert names[:3] == ["label_4d.nii.gz", "volumes.csv", "cardiac_function.json"]
    assert (
        "good_b: not done, no outputs.json (outputs of an earlier version, or of a run that did not finish); it is "
        "redone only with --overwrite true" in caplog.text
    )


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
    for name in ("bad", "no_annotation", "unzipped"):
        shutil.rmtree(dataset / name)
    batch = make_batch(dataset, out, skip_done=True, cohort_file=out / "cohort.csv")
    for name in ("good_a", "good_b"):
        finish(batch, name, json.dumps({"lv": {"edv_ml": 90.0}}))

    class Evaluator:
        def run(self) -> None:
            raise AssertionError("nothing to run")

    batch.run(Evaluator())  # no error: nothing failed, nothing to do
    assert [(r["study"], r["status"], r["lv_edv_ml"]) for r in read_cohort(out / "cohort.csv")] == [
        ("good_a", "skipped_done", "90.0"),
        ("good_b", "skipped_done", "90.0"),
    ]


def test_flatten_report_keeps_the_scalars_in_order_and_merge_columns_keeps_the_reports_order() -> None:
    report = {
        "study": "a",
        "ed_phase": 0,
        "ed_source": "info.json",
        "lv": {"edv_ml": 150.0, "ef_percent": None},
        "volumes_ml": {"lv": [1.0, 2.0]},
        "flags": ["LV EF 120 %"],
        "indexed": {"lv": {"edv_ml_per_m2": 80.5}},
        "conventions": {"slices": "every slice that the propagation labels, no basal interpolation", "gap_mm": 2},
    }
    assert flatten_report(report) == {
        "ed_phase": 0,
        "ed_source": "info.json",
        "lv_edv_ml": 150.0,
        "lv_ef_percent": None,
        "indexed_lv_edv_ml_per_m2": 80.5,
        "conventions_gap_mm": 2,
    }
    # a study without height lacks the indexed values: they go after the key that precedes them in their own row
    assert merge_columns([["a", "c", "d"], ["a", "b", "c", "e", "d"], ["f"]]) == ["f", "a", "b", "c", "e", "d"]


def test_cohort_rows_list_every_status_with_numbers_flags_and_timing(tmp_path: Path) -> None:
    def report(name: str, **extra: object) -> Path:
        path = tmp_path / name / "cardiac_function.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"study": name, "lv": {"ef_percent": 60.0}, "flags": [], **extra}))
        return path

    timing = {"study": "b", "frames": 30, "load_s": 0.1, "inference_s": 2.0, "postprocessing_s": 0.2, "fps": 15.0}
    broken = tmp_path / "e" / "cardiac_function.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    columns, rows = cohort_rows(
        [
            CohortStudy("c", "failed", "image.nii.gz: image contains NaN or Inf values."),
            CohortStudy("b", "processed", reports=[report("b", indexed={"lv_mass_g_per_m2": 41.0})], timing=timing),
            CohortStudy("a", "skipped_done", reports=[report("a", flags=["LV EF 120.0 % outside [0, 100] %"])]),
            CohortStudy("e", "skipped_done", reports=[broken]),
        ]
    )
    assert columns == [
        "study",
        "status",
        "error",
        "num_flags",
        "flags",
        "lv_ef_percent",
        "indexed_lv_mass_g_per_m2",
    ] + [*TIMING]
    assert [r["study"] for r in rows] == ["a", "b", "c", "e"]
    assert rows[0] == {
        "study": "a",
        "status": "skipped_done",
        "error": "",
        "lv_ef_percent": 60.0,
        "num_flags": 1,
        "flags": "LV EF 120.0 % outside [0, 100] %",
    }
    assert rows[1]["indexed_lv_mass_g_per_m2"] == 41.0 and rows[1]["fps"] == 15.0 and rows[1]["num_flags"] == 0
    assert rows[2] == {"study": "c", "status": "failed", "error": "image.nii.gz: image contains NaN or Inf values."}
    assert rows[3]["error"].startswith("cardiac_function.json: cannot be read (JSONDecodeError")


class FakeEvaluator(Engine):
    """An ignite engine over the screened studies whose iteration is :meth:`StudyBatch.run_study` (as the
    ``SupervisedEvaluator``'s ``iteration_update``) and whose inference writes a tiny report per study."""

    def __init__(self, batch: StudyBatch, out: Path, fail: str = "", error: type[BaseException] = RuntimeError):
        self.batch, self.out, self.fail, self.error = batch, out, fail, error
        super().__init__(lambda engine, item: batch.run_study(self, {k: [v] for k, v in item.items()}))

    def _iteration(self, engine: Engine, batch: dict) -> dict:
        if batch["study"][0] == self.fail:
            raise self.error("CUDA out of memory")
        for path in self.batch.output_files(batch["study"][0]):  # where the writers write (output_folder)
            path = Path(batch[OUTPUT_FOLDER_KEY][0]) / path.name
            path.write_text(json.dumps({"study": batch["study"][0], "lv": {"edv_ml": 100.0}, "flags": []}))
        return {"pred": 1}

    def run(self) -> None:  # a MONAI workflow runs on its own data loader
        super().run(self.batch.screen())


class Timer:
    def __init__(self, studies: list[str]):
        self.records = [
            dict(study=s, frames=30, load_s=0.1, inference_s=2.0, postprocessing_s=0.1, fps=15.0) for s in studies
        ]


def read_cohort(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_the_cohort_table_and_logs_progress(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    write_study(dataset / "good_c")
    batch = make_batch(
        dataset, out, skip_done=True, progress=True, timer=Timer(["good_b"]), cohort_file=out / "cohort.csv"
    )
    finish(batch, "good_a", json.dumps({"lv": {"edv_ml": 90.0}, "flags": ["odd"]}))  # finished by an earlier run
    (out / "cohort.csv").write_text("an earlier table\n")  # a summary: regenerated, whatever --overwrite says
    with caplog.at_level(logging.INFO), pytest.raises(CSTMInputError, match=r"4 of 6 studies failed"):
        batch.run(FakeEvaluator(batch, out, fail="good_c"))
    rows = {r["study"]: r for r in read_cohort(out / "cohort.csv")}
    assert {name: r["status"] for name, r in rows.items()} == {
        "bad": "failed",
        "good_a": "skipped_done",
        "good_b": "processed",
        "good_c": "failed",
        "no_annotation": "failed",
        "unzipped": "failed",
    }
    assert rows["good_a"]["lv_edv_ml"] == "90.0" and rows["good_a"]["flags"] == "odd" and rows["good_a"]["fps"] == ""
    assert rows["good_b"]["lv_edv_ml"] == "100.0" and rows["good_b"]["num_flags"] == "0"
    assert rows["good_b"]["inference_s"] == "2.0" and rows["good_b"]["fps"] == "15.0"
    assert rows["good_c"]["error"] == "RuntimeError: CUDA out of memory" and rows["good_c"]["lv_edv_ml"] == ""
    assert "cannot be read as NIfTI" in rows["bad"]["error"]
    lines = [r.getMessage() for r in caplog.records if re.match(r"study \d+/\d+ ", r.getMessage())]
    assert [line.split(";")[0] for line in lines] == ["study 1/2 (good_b): done", "study 2/2 (good_c): failed"]
    assert lines[-1].endswith("ETA 0:00:00")

    # without JSON reports (--clinical_outputs false, evaluate.json) there is no table
    plain = StudyBatch(
        list_studies(dataset, check=False),
        dataset,
        transform=lambda item: item,
        writers=[SaveStudyLabeld("pred", tmp_path / "plain")],
        cohort_file=tmp_path / "plain" / "cohort.csv",
    )
    with pytest.raises(CSTMInputError):
        plain.run(FakeEvaluator(plain, tmp_path / "plain"))
    assert (tmp_path / "plain" / "good_b" / "label_4d.nii.gz").is_file()
    assert not (tmp_path / "plain" / "cohort.csv").exists()


def test_each_rank_takes_its_share_and_rank0_writes_for_all(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two ranks, simulated: each screens all studies and takes every other one (not padded); rank 0 gathers."""
    for name in ("bad", "no_annotation", "unzipped"):
        shutil.rmtree(dataset / name)
    for name in ("good_c", "good_d", "good_e"):
        write_study(dataset / name)
    with pytest.raises(ValueError, match="needs an initialized torch.distributed process group"):
        make_batch(dataset, distributed=True).screen()

    out = tmp_path / "out"
    monkeypatch.setattr(batch_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(batch_module.dist, "get_world_size", lambda: 2)
    shares, gathered = {}, {}
    for rank in (1, 0):  # rank 1 first: rank 0 receives what it sent
        monkeypatch.setattr(batch_module.dist, "get_rank", lambda rank=rank: rank)

        def all_gather_object(parts: list, obj: object, rank: int = rank) -> None:
            gathered[rank] = obj
            parts[:] = [gathered.get(0, obj), gathered.get(1, obj)]

        monkeypatch.setattr(batch_module.dist, "all_gather_object", all_gather_object)
        batch = make_batch(dataset, out, cohort_file=out / "cohort.csv", distributed=True)
        shares[rank] = [s["study"] for s in batch.screen()]
        evaluator = FakeEvaluator(batch, out, fail="good_d" if rank == 1 else "")
        if rank == 1:
            batch.run(evaluator)  # its failure is rank 0's to report
        else:
            with caplog.at_level(logging.INFO), pytest.raises(
                CSTMInputError, match=r"1 of 5 studies failed \(good_d\)"
            ):
                batch.run(evaluator)
        assert (out / "cohort.csv").exists() == (rank == 0), rank  # after rank 1 is done, by rank 0 only
    assert shares == {0: ["good_a", "good_c", "good_e"], 1: ["good_b", "good_d"]}
    monkeypatch.setattr(batch_module.dist, "get_rank", lambda: 1)
    one = StudyBatch(list_studies(dataset / "good_a", check=False), dataset / "good_a", lambda x: x, distributed=True)
    assert one.screen() == []  # fewer studies than ranks: rank 0 has the study, rank 1 none
    rows = {r["study"]: r["status"] for r in read_cohort(out / "cohort.csv")}
    assert (
        "batch of 5 studies in" in caplog.text and "4 processed, 0 skipped as done, 1 failed (2 ranks)" in caplog.text
    )
    assert rows == {
        "good_a": "processed",
        "good_b": "processed",
        "good_c": "processed",
        "good_d": "failed",
        "good_e": "processed",
    }


# ---------------------------------------------------------------- a study's outputs as one unit (outputs.json)

SETTINGS = {"time_direction": "forward", "checkpoint_sha256": "a" * 64}


class WritingEngine:
    """An evaluator's ``_iteration`` through real writers: the study's ED labels at every phase as the prediction
    (minus ``erase`` phases), each writer applied to the decollated item, as MONAI's postprocessing does."""

    def __init__(self, writers: list, erase: int = 0):
        self.writers, self.erase = writers, erase

    def _iteration(self, engine: object, batch: dict) -> dict:
        item = {key: value[0] for key, value in batch.items()}
        labels = np.asarray(nib.load(Path(item["study_dir"]) / "label_ed.nii.gz").dataobj).astype(np.uint8)
        pred = np.repeat(labels[..., None], 5, axis=-1)  # (H, W, Z, T)
        pred[..., pred.shape[-1] - self.erase :] = 0
        item["pred"] = torch.as_tensor(pred)[None]  # (1, H, W, Z, T)
        for writer in self.writers:
            item = writer(item)
        return item


def fail_after_the_label_map(item: dict) -> dict:
    """A writer that fails once the label map is written, as the DICOM SEG of a file without FrameOfReferenceUID."""
    raise CSTMInputError(Path(item["study_dir"]) / "dicom" / "IM0001", "no FrameOfReferenceUID", "one per series")


def unit_batch(root: Path, out: Path, **kwargs) -> StudyBatch:
    writers = [SaveStudyLabeld("pred", out, overwrite=True), CardiacOutputsd("pred", out, True, pictures=False)]
    kwargs = {"settings": SETTINGS, "overwrite": True, **kwargs}
    return StudyBatch(list_studies(root, check=False), root, transform=lambda item: item, writers=writers, **kwargs)


def run_one(batch: StudyBatch, engine: WritingEngine) -> object:
    (item,) = batch.screen()
    return batch.run_study(engine, {key: [value] for key, value in item.items()})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_rerun_leaves_the_earlier_outputs_whole_and_not_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 31: an --overwrite rerun that failed after label_4d.nii.gz left it beside the old report, and
    --skip_done then took the mixed set (and cohort.csv its old numbers) as done."""
    root, out = tmp_path / "data", tmp_path / "out"
    write_study(root / "s1")
    first = unit_batch(root, out)
    assert run_one(first, WritingEngine(first.writers)) is not None
    folder = out / "s1"
    before = snapshot(folder)
    assert sorted(before) == sorted(
        ["label_4d.nii.gz", "volumes.csv", "cardiac_function.json", "report.md", MANIFEST_FILE]
    )
    record = json.loads(before[MANIFEST_FILE])
    assert record["settings"] == SETTINGS and sorted(record["inputs"]) == [
        "image.nii.gz",
        "info.json",
        "label_ed.nii.gz",
        "label_es.nii.gz",
    ]
    assert record["outputs"]["report.md"] == hashlib.sha256(before["report.md"]).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == ["s1"]  # no staging folder left
    assert [s["study"] for s in unit_batch(root, out, skip_done=True).screen()] == []  # done

    (root / "s1" / "info.json").write_text(json.dumps({"ed": 0, "es": 4}))  # the inputs change: es 2 -> 4
    rerun = unit_batch(root, out, skip_done=True)
    with caplog.at_level(logging.INFO):
        assert [s["study"] for s in rerun.screen()] == ["s1"]
    assert "s1: not done, inputs changed since its outputs were made: info.json changed; it is redone" in caplog.text
    engine = WritingEngine([rerun.writers[0], fail_after_the_label_map, rerun.writers[1]], erase=2)
    assert rerun.run_study(engine, {k: [v] for k, v in rerun.share[0].items()}) is None
    assert rerun.failed[str(root / "s1")] == "dicom/IM0001: no FrameOfReferenceUID; expected one per series."
    assert snapshot(folder) == before  # the earlier set, whole: no new label map beside the old report
    assert sorted(p.name for p in out.iterdir()) == ["s1"]
    assert [s["study"] for s in unit_batch(root, out, skip_done=True).screen()] == ["s1"]  # still not done

    again = unit_batch(root, out, skip_done=True)
    assert run_one(again, WritingEngine(again.writers, erase=2)) is not None
    after = snapshot(folder)
    assert after["label_4d.nii.gz"] != before["label_4d.nii.gz"] and after["report.md"] != before["report.md"]
    assert json.loads(after["cardiac_function.json"])["es_phase"] == 4
    assert [s["study"] for s in unit_batch(root, out, skip_done=True).screen()] == []


def _edit_info(study: Path, out: Path) -> dict:
    (study / "info.json").write_text(json.dumps({"ed": 0, "es": 4}))
    return {}


def _add_annotation(study: Path, out: Path) -> dict:
    shutil.copy(study / "label_ed.nii.gz", study / "annotation.nii.gz")
    (study / "info.json").write_text(json.dumps({"ed": 0, "es": 2, "annotated_phase": 0}))
    return {}


def _edit_output(study: Path, out: Path) -> dict:
    (out / "s1" / "report.md").write_text("edited")
    return {}


def _remove_record(study: Path, out: Path) -> dict:
    (out / "s1" / MANIFEST_FILE).unlink()  # outputs of an earlier version: all files there, no record
    return {}


@pytest.mark.parametrize(
    "change, reason",
    [
        (_edit_info, "inputs changed since its outputs were made: info.json changed"),
        (_add_annotation, "inputs changed since its outputs were made: annotation.nii.gz added, info.json changed"),
        (
            lambda s, o: {"checkpoint_sha256": "b" * 64},
            f"settings changed since its outputs were made: checkpoint_sha256 {'a' * 64!r} -> {'b' * 64!r}",
        ),
        (
            lambda s, o: {"time_direction": "both"},
            "settings changed since its outputs were made: time_direction 'forward' -> 'both'",
        ),
        (_edit_output, "outputs missing or changed: report.md (changed since it was written)"),
        (_remove_record, "no outputs.json"),
    ],
    ids=["info_json", "annotation_added", "weights", "option", "output_edited", "no_record"],
)
def test_skip_done_redoes_a_study_whose_record_differs(
    change, reason: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, out = tmp_path / "data", tmp_path / "out"
    write_study(root / "s1")
    finish(unit_batch(root, out), "s1")
    assert [s["study"] for s in unit_batch(root, out, skip_done=True).screen()] == []
    settings = {**SETTINGS, **change(root / "s1", out)}
    with caplog.at_level(logging.WARNING):
        assert [s["study"] for s in unit_batch(root, out, skip_done=True, settings=settings).screen()] == ["s1"]
    assert f"s1: not done, {reason}" in caplog.text


def test_commit_swaps_the_whole_folder_in(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "s1"
    folder.mkdir(parents=True)
    (folder / "segmentation.dcm").write_text("an earlier DICOM study's SEG")  # not made by the new run
    staging = new_staging(folder)
    assert staging.parent == folder.parent and staging.name.startswith(".s1.")
    (staging / "label_4d.nii.gz").write_text("new")
    record = manifest("s1", staging, {"image.nii.gz": "0" * 64}, SETTINGS, "test")
    with pytest.raises(CSTMInputError, match=r"out/s1: output folder exists; expected a new --output_dir, or"):
        commit(staging, folder, record, overwrite=False)
    assert snapshot(folder) == {"segmentation.dcm": b"an earlier DICOM study's SEG"}
    commit(staging, folder, record, overwrite=True)
    assert sorted(snapshot(folder)) == ["label_4d.nii.gz", MANIFEST_FILE]  # the old SEG does not survive beside it
    assert sorted(p.name for p in folder.parent.iterdir()) == ["s1"]
    assert check_done(folder, ["label_4d.nii.gz"], lambda: {"image.nii.gz": "0" * 64}, SETTINGS) == ""
    assert check_done(folder, ["label_4d.nii.gz", "qc.csv"], lambda: {"image.nii.gz": "0" * 64}, SETTINGS) == (
        "outputs missing or changed: qc.csv (not made by that run)"
    )


@pytest.mark.parametrize("error, on_error", [(KeyboardInterrupt, "continue"), (RuntimeError, "stop")])
def test_an_interrupted_run_still_writes_the_cohort_table(
    error: type[BaseException], on_error: str, dataset: Path, tmp_path: Path
) -> None:
    """Issue 31 item 8: Ctrl-C (or --on_error stop) mid-batch left no cohort.csv for the studies that finished."""
    for name in ("bad", "no_annotation", "unzipped"):
        shutil.rmtree(dataset / name)
    write_study(dataset / "good_c")
    out = tmp_path / "out"
    batch = make_batch(dataset, out, on_error=on_error, cohort_file=out / "cohort.csv")
    with pytest.raises(error, match="CUDA out of memory"):
        batch.run(FakeEvaluator(batch, out, fail="good_b", error=error))
    rows = {r["study"]: (r["status"], r["error"], r["lv_edv_ml"]) for r in read_cohort(out / "cohort.csv")}
    stopped = f"the run stopped ({error.__name__}) before this study finished"
    assert rows == {
        "good_a": ("processed", "", "100.0"),
        "good_b": (
            ("failed", "RuntimeError: CUDA out of memory", "") if on_error == "stop" else ("not_run", stopped, "")
        ),
        "good_c": ("not_run", stopped, ""),
    }
    assert sorted(p.name for p in out.iterdir()) == ["cohort.csv", "good_a"]  # no staging folder of good_b left


def test_a_study_folder_named_like_the_cohort_table_is_refused_up_front(dataset: Path, tmp_path: Path) -> None:
    """Issue 31 item 8: a study folder named cohort.csv had its outputs where the table goes, and the run failed."""
    for name in ("bad", "no_annotation", "unzipped", "good_b"):
        shutil.rmtree(dataset / name)
    write_study(dataset / "cohort.csv")
    out = tmp_path / "out"
    batch = make_batch(dataset, out, cohort_file=out / "cohort.csv")
    assert [s["study"] for s in batch.screen()] == ["good_a"]
    assert batch.failed == {
        str(dataset / "cohort.csv"): f"its output folder would be {out / 'cohort.csv'}, the run's cohort table; "
        "expected another name for this study folder (cohort.csv is the table's)."
    }
    with pytest.raises(CSTMInputError, match=r"1 of 2 studies failed \(cohort.csv\)"):
        batch.run(FakeEvaluator(batch, out))
    assert (out / "cohort.csv").is_file()
    assert {r["study"]: r["status"] for r in read_cohort(out / "cohort.csv")} == {
        "cohort.csv": "failed",
        "good_a": "processed",
    }
