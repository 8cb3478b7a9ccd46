"""A batch of studies through ``inference.json``: every study checked before the run, a bad one reported and passed
over (or the run stopped), finished ones skipped on a rerun, and a summary at the end that fails the run.

``inference.json`` wires it into MONAI's evaluator without changing it::

    batch     = StudyBatch(datalist, ...)        the studies of --dataset_dir, unchecked
    studies   = batch.screen()                   the valid, unfinished ones; the others listed (before any work)
    dataset   = Dataset(studies, batch.load)     preprocessing; a failure becomes a marker item (no exception)
    evaluator = SupervisedEvaluator(..., iteration_update=batch.run_study)   a failed study is logged and passed over
    run       = batch.run(evaluator)             evaluator.run(), the summary, cohort.csv; non-zero exit if a study failed

A study's outputs are one unit (:mod:`.outputs`): :meth:`StudyBatch.run_study` has the writers write them into a
hidden staging folder, records them in ``outputs.json`` and swaps the folder in whole, so that a study that fails
leaves its earlier outputs as they were; ``--skip_done`` passes over only a study whose record matches the current
inputs, weights and settings. An interrupted run (Ctrl-C, ``--on_error stop``) still writes ``cohort.csv``.

Under ``torchrun`` (``multi_gpu_inference.json``, ``distributed=True``) every rank screens every study (the same
list), :meth:`StudyBatch.screen` returns the rank's share of them, and :meth:`StudyBatch.run` gathers what became of
each study to rank 0, which logs the summary and writes ``cohort.csv`` once all ranks are done.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch.distributed as dist
from ignite.engine import Events
from monai.data import DistributedSampler

from ..errors import CSTMInputError, find_input_error
from .cohort import CohortStudy, write_cohort
from .dicom import DICOM_DIR, scan_cine_dicom
from .dicom_seg import bundle_version
from .outputs import OUTPUT_FOLDER_KEY, check_done, commit, discard, manifest, new_staging, study_inputs
from .readers import check_image_file, image_geometry, skipped_folders
from .study import read_info
from .transforms import read_annotation

logger = logging.getLogger(__name__)

FAILED_KEY = "study_error"
"""Key of the item that :meth:`StudyBatch.load` returns for a study that failed to load: the problem, one line."""


def check_study(study: Mapping[str, Any], annotation: str = "required") -> None:
    """The checks of one study that read no pixel data: its image file or DICOM series (format, shape, geometry),
    its ``info.json`` and its annotated frame (file, phase, grid, values, not empty), as ``LoadStudyd`` finds it.

    What needs the pixels (NaN, a constant image) is checked when the study is loaded, during the run.

    Args:
        study: an item of :func:`~.readers.list_studies` ("image", "study_dir").
        annotation: ``--annotation`` (:func:`~.transforms.read_annotation`): "if_missing"/"auto" accept a study
            without annotation.
    Raises:
        CSTMInputError: naming the file and the problem.
    """
    image, folder = Path(study["image"]), Path(study["study_dir"])
    if image.name == DICOM_DIR:
        shape = scan_cine_dicom(image).shape
    else:
        shape = check_image_file(image)
    affine, _ = image_geometry(image)
    # the run's own check, minus the pixels
    read_annotation(folder, read_info(folder), tuple(shape), affine, annotation=annotation)


def describe(error: BaseException, study_dir: str | os.PathLike | None = None) -> str:
    """One line for a study's failure: the :class:`CSTMInputError` behind ``error`` (MONAI wraps the errors of
    transforms), else the innermost cause as ``Type: message``; paths inside ``study_dir`` are made relative to it."""
    cause = find_input_error(error)
    if cause is None:
        cause = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        text = f"{type(cause).__name__}: {cause}"
    else:
        text = str(cause)
    if study_dir is not None:
        text = text.replace(f"{study_dir}{os.sep}", "").removeprefix(f"{study_dir}: ")
    return " ".join(text.split())[:500]


class StudyBatch:
    """The studies of one inference run, and what became of each: bad before the run, done earlier (skipped),
    failed during the run, or segmented.

    Args:
        studies: :func:`~.readers.list_studies` of ``dataset_dir``, with ``check=False`` (this class checks them).
        dataset_dir: the dataset folder (a folder of studies, or one study).
        transform: the preprocessing of one study (``LoadImaged`` ... ``LoadStudyd``), applied by :meth:`load`.
        writers: the postprocessing transforms; those with ``output_files(study)`` name what a finished study has.
        on_error: "continue": a bad study is listed and passed over, the others processed, and :meth:`run` ends
            with a summary and an error; "stop": the first bad study stops the run with its error.
        skip_done: pass over a study that is done, with a log line: its ``outputs.json`` lists every file of
            ``writers``, unchanged, made from the current input files and ``settings`` (:func:`.outputs.check_done`).
        progress: log one line per study, ``study i/N (name): done; elapsed h:mm:ss, ETA h:mm:ss``.
        timer: the :class:`~scripts.metrics.StudyTimer` of the evaluator, whose records give the cohort's timings.
        cohort_file: where :meth:`run` writes the cohort table (:mod:`.cohort`), rewritten at the end of every run;
            only when the writers write a JSON report per study (``cardiac_function.json``: the clinical outputs).
            None writes none.
        annotation: ``--annotation``: what the screening accepts (:func:`check_study`).
        overwrite: ``--overwrite``: a study's new outputs may replace an existing output folder.
        settings: what the outputs depend on besides the input files (:func:`.outputs.result_settings`), recorded
            in each study's ``outputs.json``.
        distributed: each rank of an initialized ``torch.distributed`` process group takes its share of the screened
            studies (``DistributedSampler``, in order, not padded); rank 0 logs the screening, the summary and writes
            the cohort table after every rank is done.
    """

    def __init__(
        self,
        studies: Sequence[Mapping[str, Any]],
        dataset_dir: str | os.PathLike,
        transform: Callable[[Any], Any],
        writers: Iterable[Any] = (),
        on_error: Literal["continue", "stop"] = "continue",
        skip_done: bool = False,
        progress: bool = False,
        timer: Any = None,
        cohort_file: str | os.PathLike | None = None,
        annotation: str = "required",
        distributed: bool = False,
        overwrite: bool = False,
        settings: Mapping[str, Any] | None = None,
    ):
        if on_error not in ("continue", "stop"):
            raise ValueError(f"on_error must be 'continue' or 'stop', got {on_error!r}.")
        self.studies = [dict(s) for s in studies]
        self.dataset_dir = Path(dataset_dir)
        self.transform, self.writers = transform, list(writers)
        self.on_error, self.skip_done, self.progress, self.timer = on_error, skip_done, progress, timer
        self.cohort_file = None if cohort_file is None else Path(cohort_file)
        self.annotation = annotation
        self.distributed = distributed
        self.overwrite = overwrite
        self.settings = dict(settings or {})
        self.version = bundle_version()
        self.rank, self.world = 0, 1
        self.todo: list[dict[str, Any]] | None = None
        """Every study to process (valid and, with ``skip_done``, unfinished), on every rank."""
        self.share: list[dict[str, Any]] | None = None
        """This rank's share of :attr:`todo` (all of it in one process)."""
        self.done: list[str] = []
        """Studies skipped as done (``skip_done``)."""
        self.finished: list[str] = []
        """Studies this process segmented and wrote, in order."""
        self._inputs: dict[str, dict[str, str]] = {}
        """study folder -> :func:`.outputs.study_inputs`, taken before the study is read (:meth:`load`)."""
        self.failed: dict[str, str] = {}
        """study folder -> problem (one line)."""
        self._first_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"StudyBatch({len(self.studies)} studies in {self.dataset_dir}, on_error={self.on_error!r})"

    def output_files(self, study: str) -> list[Path]:
        """The files a finished ``study`` has in ``<output_dir>/<study>/`` (beside its ``outputs.json``)."""
        return [p for w in self.writers if hasattr(w, "output_files") for p in w.output_files(study)]

    def output_folder(self, study: str) -> Path | None:
        """``<output_dir>/<study>``, the folder of the study's outputs; None when the writers name no file."""
        files = self.output_files(study)
        return files[0].parent if files else None

    def screen(self) -> list[dict[str, Any]]:
        """Check every study before the run (:func:`check_study`) and list each bad one, one line each (study
        folder and problem); a sub-folder that looks like a study but is not one (``image.nii``) is a bad study too.

        With ``distributed``, every rank screens every study (so all agree on the list) and only rank 0 logs it.

        Returns:
            the studies to process: valid and, with ``skip_done``, not finished; with ``distributed`` this rank's
            share of them (:attr:`share`). The same list on every call.
        Raises:
            CSTMInputError: with ``on_error="stop"``, the first bad study's error (after listing them all); with
                "continue", when no study is left to process because all failed: the study's own error for a single
                study, else a summary.
        """
        if self.share is not None:
            return self.share
        if self.distributed:
            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError(
                    "StudyBatch(distributed=True) needs an initialized torch.distributed process group (torchrun "
                    "with multi_gpu_inference.json, whose 'initialize' creates it)."
                )
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        folders = [Path(s["study_dir"]) for s in self.studies]
        bad: list[tuple[str, BaseException]] = []
        if folders and all(f.parent == self.dataset_dir for f in folders):  # listed from dataset_dir (no datalist)
            bad += [(str(f), CSTMInputError(f, problem)) for f, problem in skipped_folders(self.dataset_dir, folders)]
        todo = []
        for study in self.studies:
            collision = self._cohort_collision(study)
            if collision is not None:
                bad.append((study["study_dir"], collision))
                continue
            if self.skip_done and self._finished(study):
                self._log(
                    logging.INFO,
                    f"{study['study']}: skipped, done already (--skip_done true): "
                    f"{self.output_files(study['study'])[0].parent}",
                )
                self.done.append(study["study"])
                continue
            try:
                check_study(study, self.annotation)
            except Exception as e:  # the up-front checks raise CSTMInputError; anything else is listed the same way
                bad.append((study["study_dir"], e))
                continue
            todo.append(study)
        bad.sort(key=lambda item: item[0])
        for folder, error in bad:
            self._log(logging.ERROR, f"bad study {folder}: {describe(error, folder)}")
            self._record(folder, error)
        if bad and self.on_error == "stop":
            raise bad[0][1]
        if self.skip_done and not self.output_files("any"):
            self._log(
                logging.WARNING, "--skip_done: the postprocessing writes no per-study file, so no study counts as done"
            )
        if bad:
            self._log(
                logging.WARNING,
                f"{len(bad)} bad {'study' if len(bad) == 1 else 'studies'} listed above will not be "
                f"processed; {len(todo)} will (--on_error continue)",
            )
        self.todo = todo
        if bad and not todo and not self.done:
            self._raise_failures()
        if self.world > 1:  # rank r takes todo[r::world], as MONAI's DistributedSampler deals them: no padding
            if len(todo) >= self.world:
                sampler = DistributedSampler(
                    todo, even_divisible=False, num_replicas=self.world, rank=self.rank, shuffle=False
                )
                indices = list(sampler)
            else:  # the same, for fewer studies than ranks (which the sampler refuses): some ranks have none
                indices = list(range(self.rank, len(todo), self.world))
            self.share = [todo[i] for i in indices]
            logger.info(f"rank {self.rank} of {self.world}: {len(self.share)} of the {len(todo)} studies")
        else:
            self.share = todo
        return self.share

    def _log(self, level: int, message: str) -> None:
        """Log on rank 0 only (every rank screens the same studies)."""
        if self.rank == 0:
            logger.log(level, message)

    def _finished(self, study: Mapping[str, Any]) -> bool:
        """Whether ``study`` is done (:func:`.outputs.check_done`); why not is logged when its folder holds files."""
        folder = self.output_folder(study["study"])
        if folder is None or not folder.is_dir() or not any(folder.iterdir()):
            return False
        reason = check_done(
            folder,
            [p.relative_to(folder).as_posix() for p in self.output_files(study["study"])],
            lambda: study_inputs(study["image"], study["study_dir"]),
            self.settings,
        )
        if reason:
            self._log(
                logging.WARNING,
                f"{study['study']}: not done, {reason}; it is redone"
                + ("" if self.overwrite else " only with --overwrite true"),
            )
        return not reason

    def _writes_cohort(self) -> bool:
        """Whether :meth:`run` writes ``cohort_file``: the writers write a JSON report per study."""
        return self.cohort_file is not None and any(p.suffix == ".json" for p in self.output_files("any"))

    def _cohort_collision(self, study: Mapping[str, Any]) -> CSTMInputError | None:
        """The error of a study whose output folder is the path of the cohort table (a study folder named
        ``cohort.csv``); None for any other study."""
        folder, table = self.output_folder(study["study"]), self.cohort_file
        if folder is None or table is None or not self._writes_cohort():
            return None
        if os.path.abspath(folder) != os.path.abspath(table):
            return None
        return CSTMInputError(
            study["study_dir"],
            f"its output folder would be {table}, the run's cohort table",
            f"another name for this study folder ({table.name} is the table's)",
        )

    def _record(self, study_dir: str, error: BaseException) -> None:
        self.failed[str(study_dir)] = describe(error, study_dir)
        if len(self.studies) == 1 and self._first_error is None:  # re-raised at the end; in a batch of several
            self._first_error = find_input_error(error) or error  # studies, kept frames could hold a study's tensors

    def load(self, study: Mapping[str, Any]) -> Any:
        """The preprocessing of one study (the ``Dataset``'s transform). With ``on_error="continue"`` a failure is
        logged and returned as ``{"study", "study_dir", FAILED_KEY: problem}``, which :meth:`run_study` passes over.

        The digests of the study's input files (:func:`.outputs.study_inputs`) are taken first, before the study is
        read, so that ``outputs.json`` never records a file changed after it was read as the one the outputs came
        from."""
        if self.output_files(study["study"]):
            try:
                self._inputs[str(study["study_dir"])] = study_inputs(study["image"], study["study_dir"])
            except OSError:  # the transform reports the unreadable file
                pass
        try:
            return self.transform(study)
        except Exception as e:
            self._record(study["study_dir"], e)  # in this process (num_workers 0); run_study records the marker too
            if self.on_error == "stop":
                raise
            logger.error(f"study {study['study_dir']} failed: {describe(e, study['study_dir'])}")
            return {
                "study": study["study"],
                "study_dir": study["study_dir"],
                FAILED_KEY: describe(e, study["study_dir"]),
            }

    def run_study(self, engine: Any, batch: Any) -> Any:
        """The evaluator's iteration (its ``iteration_update``): MONAI's own ``_iteration`` (inference and
        postprocessing) on one study; with ``on_error="continue"`` a study that failed to load, or fails here, is
        recorded and gives no output (None), and the run goes on with the next study.

        The writers write into a staging folder (:data:`.outputs.OUTPUT_FOLDER_KEY` of the batch), which replaces
        ``<output_dir>/<study>`` once every output is written and recorded (:func:`.outputs.commit`); a study that
        fails (or is interrupted) leaves its earlier outputs untouched and its staging folder removed.

        Args:
            engine: the ``SupervisedEvaluator``.
            batch: the collated batch of one study (``batch_size`` 1), a dict.
        """
        folders = batch.get("study_dir") if isinstance(batch, dict) else None
        folder = str(folders[0] if isinstance(folders, (list, tuple)) else folders)
        if isinstance(batch, dict) and FAILED_KEY in batch:
            problems = batch[FAILED_KEY]
            self.failed[folder] = str(problems[0] if isinstance(problems, (list, tuple)) else problems)
            return None
        names = batch.get("study") if isinstance(batch, dict) else None
        study = str(names[0] if isinstance(names, (list, tuple)) else names)
        target, staging = self.output_folder(study), None
        try:
            if target is not None:
                staging = new_staging(target)
                batch[OUTPUT_FOLDER_KEY] = [str(staging)]  # the same dict as engine.state.batch: postprocessing's
            output = engine._iteration(engine, batch)
            if staging is not None:
                self._commit(study, folder, staging, target)
            self.finished.append(study)
            return output
        except Exception as e:
            self._record(folder, e)
            if self.on_error == "stop":
                raise
            logger.error(
                f"study {folder} failed: {describe(e, folder)}", exc_info=None if find_input_error(e) else e
            )  # a bug: its traceback is the report
            return None
        finally:
            discard(staging)  # gone after a commit; else the outputs of a failed or interrupted study

    def _commit(self, study: str, study_dir: str, staging: Path, target: Path) -> None:
        """Record the outputs in ``staging`` (``outputs.json``) and swap them in as ``target``.

        Raises:
            RuntimeError: a file that the writers name was not written (a bug: the record would not be complete).
            CSTMInputError: ``target`` cannot be replaced (:func:`.outputs.commit`).
        """
        expected = [p.relative_to(target).as_posix() for p in self.output_files(study)]
        missing = [name for name in expected if not (staging / name).is_file()]
        if missing:
            raise RuntimeError(f"{study}: the postprocessing did not write {', '.join(missing)}")
        inputs = self._inputs.pop(study_dir, None)
        if inputs is None:  # not loaded by this process (DataLoader workers)
            item = next(s for s in self.studies if str(s["study_dir"]) == study_dir)
            inputs = study_inputs(item["image"], study_dir)
        commit(staging, target, manifest(study, staging, inputs, self.settings, self.version), self.overwrite)
        logger.info(f"{study}: outputs complete, in place: {', '.join(str(target / name) for name in expected)}")

    def run(self, evaluator: Any) -> None:
        """Run ``evaluator`` over the screened studies (none: nothing to run), then log the summary and write the
        cohort table (``cohort_file``). With ``distributed``, each rank runs its share; then rank 0 gathers what
        became of every study (the other ranks return here) and logs and writes for all.

        Raises:
            CSTMInputError: some studies failed (before or during the run): the study's own error when the dataset
                is one study, else one line counting and naming them (each one's problem is logged above); raised
                on rank 0 only.
        """
        share = self.screen()
        try:
            if share:
                if self.progress:
                    self._attach_progress(evaluator, share)
                evaluator.run()
            else:
                logger.info("no study left to process" + (f" on rank {self.rank}" if self.world > 1 else ""))
        except BaseException as e:  # Ctrl-C, --on_error stop, a bug: the table of what finished, then the error
            self._interrupted(e)
            raise
        processed = list(self.finished)
        timings = list(getattr(self.timer, "records", ()))
        if self.world > 1:
            logger.info(
                f"rank {self.rank}: {len(processed)} processed, "
                f"{sum(s['study_dir'] in self.failed for s in share)} failed of its {len(share)} studies"
            )
            parts: list[Any] = [None] * self.world
            dist.all_gather_object(parts, (processed, self.failed, timings))  # also the barrier: every rank is done
            processed = sorted(name for part in parts for name in part[0])
            timings = [record for part in parts for record in part[2]]
            for part in parts:
                self.failed.update(part[1])
            if self.rank != 0:
                return
        logger.info(
            f"batch of {self._total()} studies in {self.dataset_dir}: {len(processed)} processed, "
            f"{len(self.done)} skipped as done, {len(self.failed)} failed"
            + (f" ({self.world} ranks)" if self.world > 1 else "")
        )
        for folder, problem in sorted(self.failed.items()):
            logger.error(f"failed: {folder}: {problem}")
        self._write_cohort(processed, timings)
        self._raise_failures()

    def _attach_progress(self, evaluator: Any, share: Sequence[Mapping[str, Any]]) -> None:
        """Log ``study i/N (name): done|failed; elapsed, ETA`` after each study (one study per iteration, in order)."""
        start, prefix = time.perf_counter(), f"rank {self.rank}: " if self.world > 1 else ""

        def log_progress(engine: Any) -> None:
            i = engine.state.iteration
            study = share[min(i, len(share)) - 1]
            elapsed = time.perf_counter() - start
            logger.info(
                f"{prefix}study {i}/{len(share)} ({study['study']}): "
                f"{'failed' if study['study_dir'] in self.failed else 'done'}; elapsed {_clock(elapsed)}, "
                f"ETA {_clock(elapsed / i * (len(share) - i))}"
            )

        evaluator.add_event_handler(Events.ITERATION_COMPLETED, log_progress)

    def _interrupted(self, error: BaseException) -> None:
        """After the run stopped on ``error``: log it and write the cohort table of this process's studies (those
        not finished are "not_run"). On rank 0 only; a failure to write is logged, ``error`` is what is raised."""
        if self.rank != 0:
            return
        logger.warning(
            f"run stopped ({type(error).__name__}) after {len(self.finished)} of {len(self.share or ())} studies; "
            "each finished study has its complete outputs, an unfinished one its earlier outputs or none"
        )
        try:
            self._write_cohort(
                self.finished,
                list(getattr(self.timer, "records", ())),
                f"the run stopped ({type(error).__name__}) before this study finished",
            )
        except Exception as e:
            logger.error(f"cohort table not written: {describe(e)}")

    def _write_cohort(
        self,
        processed: Sequence[str],
        timings: Sequence[Mapping[str, Any]],
        not_run: str = "the run ended before this study",
    ) -> None:
        """``cohort_file``: every study (and every folder that looked like one) with its status, error, reports and
        timing; not written when the writers write no JSON report (``--clinical_outputs false``, evaluate.json).
        ``not_run`` is the error of a study that is neither failed, done nor processed."""
        if not self._writes_cohort():
            return
        names = {s["study_dir"]: s["study"] for s in self.studies}
        timing = {str(r.get("study")): r for r in timings}
        done, ran = set(self.done), set(processed)
        entries = []
        for folder in sorted(set(names) | set(self.failed)):
            name = names.get(folder, Path(folder).name)
            reports = [p for p in self.output_files(name) if p.suffix == ".json"]
            if folder in self.failed:
                entries.append(CohortStudy(name, "failed", self.failed[folder]))
            elif name in done:
                entries.append(CohortStudy(name, "skipped_done", reports=reports))
            elif name in ran:
                entries.append(CohortStudy(name, "processed", reports=reports, timing=timing.get(name)))
            else:
                entries.append(CohortStudy(name, "not_run", not_run))
        write_cohort(self.cohort_file, entries)

    def _raise_failures(self) -> None:
        if not self.failed:
            return
        if len(self.studies) == 1 and len(self.failed) == 1:  # the dataset is one study: its own error
            if self._first_error is not None:
                raise self._first_error
            folder, problem = next(iter(self.failed.items()))
            raise CSTMInputError(folder, problem.rstrip("."))
        names = sorted(Path(f).name for f in self.failed)
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise CSTMInputError(
            self.dataset_dir,
            f"{len(names)} of {self._total()} studies failed ({shown})",
            "every study to pass; each failure is listed above, the other studies were processed",
        )

    def _total(self) -> int:
        """The studies, and the folders that look like studies but are not (:func:`~.readers.skipped_folders`)."""
        return len({s["study_dir"] for s in self.studies} | set(self.failed))


def _clock(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
