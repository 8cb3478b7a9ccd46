"""Per-study timing of a MONAI evaluator: seconds per stage and frames per second."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

logger = logging.getLogger(__name__)


class StudyTimer:
    """An Ignite handler that logs, per study (one batch of one study), the seconds spent in each stage:

    - ``load``: reading and preprocessing (``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``);
    - ``inference``: the 4D propagation (``GET_BATCH_COMPLETED`` -> ``FORWARD_COMPLETED``);
    - ``postprocessing``: saving, clinical outputs, scoring (``FORWARD_COMPLETED`` -> ``ITERATION_COMPLETED``; attach
      this handler after the others so it runs last);

    and ``fps``: the study's Z*T frames divided by the inference seconds. ``records`` keeps one dict per study; a
    study that failed (no output: :class:`~scripts.data.StudyBatch`) is not timed.
    """

    def __init__(self) -> None:
        self.records: list[dict] = []
        self._marks: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._mark, "start")
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._mark, "loaded")
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._mark, "inferred")
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)

    def _mark(self, engine: Engine, name: str) -> None:
        self._marks[name] = time.perf_counter()

    def _record(self, engine: Engine) -> None:
        end = time.perf_counter()
        if engine.state.output is None:
            self._marks = {}
            return
        m = self._marks
        batch = engine.state.batch
        items = batch if isinstance(batch, list) else [batch]
        studies = [str(b.get("study", "?")) if isinstance(b, dict) else "?" for b in items]
        study = studies[0] if len(studies) == 1 else ",".join(studies)
        image = items[0].get("image") if isinstance(items[0], dict) else None
        frames = int(image.shape[-1] * image.shape[-2]) * len(items) if image is not None else 0
        inference = m.get("inferred", end) - m.get("loaded", end)
        record = {
            "study": study,
            "frames": frames,
            "load_s": round(m.get("loaded", end) - m.get("start", end), 3),
            "inference_s": round(inference, 3),
            "postprocessing_s": round(end - m.get("inferred", end), 3),
            "fps": round(frames / inference, 2) if inference > 0 else float("nan"),
        }
        self.records.append(record)
        logger.info(
            f"{study}: {frames} frames, load {record['load_s']:.1f} s, inference {record['inference_s']:.1f} s "
            f"({record['fps']:.1f} frames/s), postprocessing {record['postprocessing_s']:.1f} s"
        )
        self._marks = {}
