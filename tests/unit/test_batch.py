"""StudyBatch (scripts/data/batch.py): the up-front check of every study, going on past a failed one, skip_done,
the cohort table (scripts/data/cohort.py), the progress lines and the share of each rank."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import nibabel as nib
import pytest
from ignite.engine import Engine
from test_bad_inputs import write_study

import scripts.data.batch as batch_module
from scripts.data import SaveStudyLabeld, StudyBatch, list_studies, skipped_folders
from scripts.data.batch import FAILED_KEY
from scripts.data.cohort import TIMING, CohortStudy, cohort_rows, flatten_report, merge_columns
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
    """Write every output file of ``study`` (as its writers name them), as a finished earlier run left them."""
    for path in batch.output_files(study):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


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
    assert f"good_b: not done, 1 of its {len(names)} outputs exist (missing {', '.join(names[1:])})" in caplog.text


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

    def __init__(self, batch: StudyBatch, out: Path, fail: str = ""):
        self.batch, self.out, self.fail = batch, out, fail
        super().__init__(lambda engine, item: batch.run_study(self, {k: [v] for k, v in item.items()}))

    def _iteration(self, engine: Engine, batch: dict) -> dict:
        if batch["study"][0] == self.fail:
            raise RuntimeError("CUDA out of memory")
        for path in self.batch.output_files(batch["study"][0]):
            path.parent.mkdir(parents=True, exist_ok=True)
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
