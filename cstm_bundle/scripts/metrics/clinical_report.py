"""The per-study clinical report: function indexed to body size, heart rate and cardiac output, the conventions the
numbers follow (SCMR post-processing recommendations: state them), and the readable ``report.md``.

- Body size: ``info.json`` ``height_cm`` / ``weight_kg``, each else the source DICOM series' PatientSize (m) /
  PatientWeight (kg). ``info.json`` values beyond any patient (:data:`~scripts.data.study.HEIGHT_CM_LIMITS`,
  :data:`~scripts.data.study.WEIGHT_KG_LIMITS`, :data:`~scripts.data.study.BMI_LIMITS`) are refused before any work
  (:func:`~scripts.data.study.read_info`); DICOM values beyond them (PatientSize written in cm) are flagged and not
  used. Within them, a body size that is still unlikely is used but flagged, and ``body.size_plausible`` is false
  (:func:`body_size_flags`): a BMI outside :data:`PLAUSIBLE_BMI` or a BSA outside :data:`PLAUSIBLE_BSA_M2` (a weight
  in pounds: 176 "kg" at 171 cm is a BMI of 60 and a BSA of 2.9 m²), or indexed values outside
  :data:`PLAUSIBLE_INDEXED` while the unindexed value is plausible (a body size that does not fit the heart: a
  neonate's 40 cm / 2 kg beside an adult heart gives an LV mass of 600 g/m²).
- Indexed values: to body surface area (Mosteller, :func:`body_surface_area`; needs height and weight), per m², and to
  height to the power :data:`HEIGHT_POWER` (1: per m; needs the height only).
- Heart rate (:func:`heart_rate`): from the DICOM only. RR interval = NominalInterval, else 60000 / HeartRate, else
  estimated from the trigger times (:func:`rr_from_trigger_times`). Cardiac output = SV × heart rate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dicom import CineTags
from ..data.study import BMI_LIMITS, HEIGHT_CM_LIMITS, INFO_FILE, WEIGHT_KG_LIMITS
from ..errors import CSTMInputError

HEIGHT_POWER = 1
"""Height-indexed values are value / height_m ** HEIGHT_POWER (per m). Power 1 keeps the unit readable (mL/m, g/m);
allometric powers (1.7, 2.7 for LV mass) are left to the analysis, which has the height in ``body``."""
BSA_FORMULA = "Mosteller: sqrt(height_cm * weight_kg / 3600) m²"
PLAUSIBLE_HEIGHT_CM = HEIGHT_CM_LIMITS
PLAUSIBLE_WEIGHT_KG = WEIGHT_KG_LIMITS
PLAUSIBLE_HEART_RATE_BPM = (25.0, 220.0)
"""Outside these the number is more likely a unit or header error than a patient: flagged (the height or weight is
not used)."""
PLAUSIBLE_ML = {"lv": (10.0, 600.0), "rv": (10.0, 600.0)}
"""EDV range (mL) of human ventricles, generously: outside it the units, the affine or the segmentation are wrong."""
PLAUSIBLE_LV_MASS_G = (20.0, 500.0)
PLAUSIBLE_BMI = (12.0, 50.0)
PLAUSIBLE_BSA_M2 = (0.2, 2.7)
"""kg/m² and m²: a body size outside these is used for indexing but flagged (check the units): adults are rarely
outside them (BMI 50 is 153 kg at 175 cm; BSA 2.7 m² is 200 cm and 130 kg), while a weight in pounds or a height in
inches moves most patients out of them."""
PLAUSIBLE_INDEXED = {
    ("lv", "edv_ml_per_m2"): ("LV EDV / BSA", "mL/m²", 20.0, 250.0),
    ("rv", "edv_ml_per_m2"): ("RV EDV / BSA", "mL/m²", 20.0, 250.0),
    ("lv_mass_g_per_m2",): ("LV mass / BSA", "g/m²", 20.0, 250.0),
}
"""Indexed values of hearts from small children to dilated and hypertrophied adults (normal adults: LV/RV EDV 55-115
mL/m², LV mass 40-95 g/m²), generously; outside, with a plausible unindexed value, the body size does not fit the
heart: flagged."""
CONVENTIONS = {
    "papillary_muscles_trabeculae": "counted as the labels have them; the training labels (ACDC) draw them inside "
    "the blood pool, so they count in the LV/RV volumes and not in the LV mass",
    "slices": "every slice that the propagation labels (each slice of the stack at each phase); no basal-slice "
    "interpolation, no partial-volume correction, no exclusion of atrial voxels beyond what the labels hold",
    "volume_method": "summation of discs: voxel count × |det(affine[:3, :3])|, i.e. pixel area × slice spacing "
    "(centre to centre), not slice thickness: a gap between slices (thickness < spacing) counts as the slice beside it",
    "bsa_formula": BSA_FORMULA,
    "height_index": f"value / height_m ** {HEIGHT_POWER}",
    "heart_rate": "DICOM NominalInterval, else HeartRate, else RR = last trigger time + one phase step (median "
    "over slices): exact for retrospective gating, an overestimate of the heart rate for prospective triggering",
}
"""The fixed part of ``cardiac_function.json``'s ``conventions``; :func:`conventions` adds the study's geometry."""


def body_surface_area(height_cm: float, weight_kg: float) -> float:
    """Body surface area in m², Mosteller (N Engl J Med 1987;317:1098): sqrt(height_cm * weight_kg / 3600)."""
    return math.sqrt(height_cm * weight_kg / 3600.0)


def _info_number(info: Mapping[str, Any], key: str, study_dir: str | os.PathLike) -> float | None:
    value = info.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise CSTMInputError(Path(study_dir) / INFO_FILE, f"{key!r} is {value!r}", "a positive number, or null")
    return float(value)


def body_size(
    info: Mapping[str, Any], tags: CineTags | None, study_dir: str | os.PathLike
) -> tuple[dict[str, Any], list[str]]:
    """Height, weight and BSA of the patient, each with its source, and the flags on them.

    Args:
        info: the study's ``info.json`` (:func:`~scripts.data.study.read_info`).
        tags: the source DICOM series' tags, None for a NIfTI study.
        study_dir: the study folder, for messages.
    Returns:
        ({"height_cm", "height_source", "weight_kg", "weight_source", "bsa_m2", "bmi_kg_per_m2", "size_plausible"},
        flags); a value and its source are None where unknown or impossible (outside :data:`PLAUSIBLE_HEIGHT_CM`,
        :data:`PLAUSIBLE_WEIGHT_KG`, or together a BMI outside :data:`~scripts.data.study.BMI_LIMITS`: flagged, not
        used); the sources are "info.json", "DICOM PatientSize", "DICOM PatientWeight". ``size_plausible``: None
        without height and weight, else whether :func:`body_size_flags` found nothing (:func:`clinical_context` also
        sets it false for implausible indexed values).
    Raises:
        CSTMInputError: ``info.json``'s ``height_cm`` / ``weight_kg`` is not a positive number (or null).
    """
    out: dict[str, Any] = {}
    flags = []
    for key, tag, dicom_value, scale, (low, high) in (
        ("height_cm", "PatientSize", tags.patient_size_m if tags else None, 100.0, PLAUSIBLE_HEIGHT_CM),
        ("weight_kg", "PatientWeight", tags.patient_weight_kg if tags else None, 1.0, PLAUSIBLE_WEIGHT_KG),
    ):
        name, unit = key.split("_")
        value, source = _info_number(info, key, study_dir), INFO_FILE
        if value is None and dicom_value is not None:
            value, source = dicom_value * scale, f"DICOM {tag}"
        if value is not None and not low <= value <= high:
            flags.append(f"{name} {value:g} {unit} ({source}) outside {low:g}-{high:g} {unit}: not used for indexing")
            value = None
        out[key] = None if value is None else round(value, 2)
        out[f"{name}_source"] = None if value is None else source
    known = out["height_cm"] is not None and out["weight_kg"] is not None
    if known and not BMI_LIMITS[0] <= body_mass_index(out["height_cm"], out["weight_kg"]) <= BMI_LIMITS[1]:
        flags.append(
            f"height {out['height_cm']:g} cm ({out['height_source']}) and weight {out['weight_kg']:g} kg "
            f"({out['weight_source']}) give a BMI of {body_mass_index(out['height_cm'], out['weight_kg']):.0f} kg/m², "
            f"outside {BMI_LIMITS[0]:g}-{BMI_LIMITS[1]:g}: not used for indexing"
        )
        out.update(dict.fromkeys(("height_cm", "height_source", "weight_kg", "weight_source")))
        known = False
    out["bsa_m2"] = round(body_surface_area(out["height_cm"], out["weight_kg"]), 3) if known else None
    out["bmi_kg_per_m2"] = round(body_mass_index(out["height_cm"], out["weight_kg"]), 1) if known else None
    size_flags = body_size_flags(out)
    out["size_plausible"] = None if not known else not size_flags
    return out, flags + size_flags


def body_mass_index(height_cm: float, weight_kg: float) -> float:
    """Body mass index in kg/m²: weight_kg / (height_cm / 100)²."""
    return weight_kg / (height_cm / 100.0) ** 2


def body_size_flags(body: Mapping[str, Any]) -> list[str]:
    """One flag when the BMI or the BSA of ``body`` (:func:`body_size`) is outside :data:`PLAUSIBLE_BMI` /
    :data:`PLAUSIBLE_BSA_M2`, naming both and the values behind them; none without height and weight."""
    if body["bsa_m2"] is None:
        return []
    outside = [
        f"{name} {value:.{digits}f} {unit} outside {low:g}-{high:g} {unit}"
        for name, value, unit, digits, (low, high) in (
            ("BMI", body["bmi_kg_per_m2"], "kg/m²", 1, PLAUSIBLE_BMI),
            ("BSA", body["bsa_m2"], "m²", 2, PLAUSIBLE_BSA_M2),
        )
        if not low <= value <= high
    ]
    if not outside:
        return []
    return [
        f"implausible body size: {', '.join(outside)} (height {body['height_cm']:g} cm from {body['height_source']}, "
        f"weight {body['weight_kg']:g} kg from {body['weight_source']}): check the units (a height in inches, a "
        "weight in pounds?)"
    ]


def indexed_flags(function: Mapping[str, Any], indexed: Mapping[str, Any]) -> list[str]:
    """One flag when BSA-indexed values are outside :data:`PLAUSIBLE_INDEXED` while their unindexed values are
    plausible (:data:`PLAUSIBLE_ML`, :data:`PLAUSIBLE_LV_MASS_G`): the body size does not fit the heart.

    Args:
        function: ``lv`` / ``rv`` (``edv_ml``), ``lv_mass_g`` and ``body`` (:func:`body_size`).
        indexed: from :func:`indexed_function`.
    """
    raw = {
        ("lv", "edv_ml_per_m2"): (function["lv"]["edv_ml"], PLAUSIBLE_ML["lv"]),
        ("rv", "edv_ml_per_m2"): (function["rv"]["edv_ml"], PLAUSIBLE_ML["rv"]),
        ("lv_mass_g_per_m2",): (function["lv_mass_g"], PLAUSIBLE_LV_MASS_G),
    }
    outside = []
    for path, (name, unit, low, high) in PLAUSIBLE_INDEXED.items():
        value = indexed[path[0]] if len(path) == 1 else indexed[path[0]][path[1]]
        unindexed, (raw_low, raw_high) = raw[path]
        if value is not None and unindexed and raw_low <= unindexed <= raw_high and not low <= value <= high:
            outside.append(f"{name} {value:.0f} {unit} outside {low:g}-{high:g} {unit}")
    if not outside:
        return []
    body = function["body"]
    return [
        f"body size does not fit the heart: {', '.join(outside)} (BSA {body['bsa_m2']:.2f} m² from height "
        f"{body['height_cm']:g} cm, weight {body['weight_kg']:g} kg): check height_cm and weight_kg"
    ]


def rr_from_trigger_times(trigger_times_ms: np.ndarray) -> float | None:
    """RR interval (ms) estimated from a cine's trigger times: per slice, the last trigger time plus one phase step
    (the median gap between its sorted trigger times), then the median over slices (each slice is its own breath-hold).

    Retrospective gating spreads the T phases evenly over the RR (trigger time k = k × RR / T), where this is exact;
    prospective triggering leaves the arrhythmia-rejection window (typically 10-20 % of the RR) unimaged, so the RR is
    underestimated and the heart rate overestimated by as much.

    Args:
        trigger_times_ms: (Z, T) trigger times.
    Returns:
        the RR in ms, or None with fewer than 2 phases or no positive step.
    """
    times = np.sort(np.asarray(trigger_times_ms, dtype=float), axis=1)  # (Z, T)
    if times.shape[1] < 2:
        return None
    steps = np.median(np.diff(times, axis=1), axis=1)  # (Z,)
    if not (steps > 0).all():
        return None
    return float(np.median(times[:, -1] + steps))


def heart_rate(tags: CineTags | None) -> tuple[dict[str, Any], list[str]]:
    """Heart rate of the cine from its DICOM tags: NominalInterval, else HeartRate, else the trigger times
    (:func:`rr_from_trigger_times`). A tag shorter than the last trigger time contradicts the images: it is flagged
    and the trigger times are used.

    Returns:
        ({"heart_rate_bpm", "rr_interval_ms", "heart_rate_source"}, flags); None values without DICOM timing. The
        source is "DICOM NominalInterval", "DICOM HeartRate" or "DICOM TriggerTime (estimate)".
    """
    flags = []
    rr, source = None, None
    if tags is not None:
        last = None if tags.trigger_times_ms is None else float(np.max(tags.trigger_times_ms))
        for tag, tag_rr in (
            ("NominalInterval", tags.nominal_interval_ms),
            ("HeartRate", 60000.0 / tags.heart_rate_bpm if tags.heart_rate_bpm else None),
        ):
            if tag_rr is None:
                continue
            if last is not None and tag_rr <= last:
                flags.append(f"DICOM {tag} (RR {tag_rr:.0f} ms) not above the last trigger time {last:.0f} ms: ignored")
                continue
            rr, source = tag_rr, f"DICOM {tag}"
            break
        if rr is None and tags.trigger_times_ms is not None:
            rr = rr_from_trigger_times(tags.trigger_times_ms)
            source = None if rr is None else "DICOM TriggerTime (estimate)"
    bpm = None if rr is None else 60000.0 / rr
    low, high = PLAUSIBLE_HEART_RATE_BPM
    if bpm is not None and not low <= bpm <= high:
        flags.append(f"heart rate {bpm:.0f} bpm ({source}) outside {low:g}-{high:g} bpm")
    return {
        "heart_rate_bpm": None if bpm is None else round(bpm, 1),
        "rr_interval_ms": None if rr is None else round(rr, 1),
        "heart_rate_source": source,
    }, flags


def _per(value: float | None, by: float | None, digits: int = 2) -> float | None:
    return None if value is None or by is None else round(value / by, digits)


def indexed_function(function: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """The function values indexed to BSA (per m²) and to height (per m ** :data:`HEIGHT_POWER`).

    Args:
        function: ``lv`` / ``rv`` dicts (``edv_ml``, ``esv_ml``, ``sv_ml``, ``co_l_per_min``) and ``lv_mass_g``.
        body: from :func:`body_size`.
    Returns:
        {"lv": {"edv_ml_per_m2", "esv_ml_per_m2", "sv_ml_per_m2", "ci_l_per_min_per_m2" (cardiac index),
        "edv_ml_per_m", "esv_ml_per_m", "sv_ml_per_m"}, "rv": {the same}, "lv_mass_g_per_m2", "lv_mass_g_per_m"}:
        every key always there, None where the body size or the value is unknown.
    """
    bsa = body["bsa_m2"]
    height = None if body["height_cm"] is None else (body["height_cm"] / 100.0) ** HEIGHT_POWER
    out: dict[str, Any] = {}
    for name in ("lv", "rv"):
        v = function[name]
        out[name] = {f"{k}_ml_per_m2": _per(v[f"{k}_ml"], bsa) for k in ("edv", "esv", "sv")}
        out[name]["ci_l_per_min_per_m2"] = _per(v.get("co_l_per_min"), bsa, 3)
        out[name].update({f"{k}_ml_per_m": _per(v[f"{k}_ml"], height) for k in ("edv", "esv", "sv")})
    out["lv_mass_g_per_m2"] = _per(function["lv_mass_g"], bsa)
    out["lv_mass_g_per_m"] = _per(function["lv_mass_g"], height)
    return out


def conventions(affine: np.ndarray, tags: CineTags | None) -> dict[str, Any]:
    """:data:`CONVENTIONS` plus the study's geometry: ``pixel_spacing_mm`` (2,) and ``slice_spacing_mm`` (the affine's
    column norms: what the volumes use) and ``slice_thickness_mm`` (DICOM SliceThickness; None for NIfTI, whose header
    has no thickness)."""
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)  # (3,) mm
    return {
        **CONVENTIONS,
        "pixel_spacing_mm": [round(float(s), 4) for s in spacing[:2]],
        "slice_spacing_mm": round(float(spacing[2]), 4),
        "slice_thickness_mm": None if tags is None or tags.slice_thickness_mm is None else tags.slice_thickness_mm,
        "height_index_power": HEIGHT_POWER,
    }


def ed_es_source(ed_source: str, es_source: str) -> str:
    """ "info.json" when both phases come from it, "volume curve" when neither does, else "info.json and volume
    curve" (``info.json`` gives one of them: ``ed_source`` / ``es_source`` say which)."""
    from_info = (ed_source == INFO_FILE, es_source == INFO_FILE)
    return INFO_FILE if all(from_info) else "info.json and volume curve" if any(from_info) else "volume curve"


def clinical_context(
    function: Mapping[str, Any],
    info: Mapping[str, Any],
    tags: CineTags | None,
    affine: np.ndarray,
    study_dir: str | os.PathLike,
) -> dict[str, Any]:
    """``function`` (:func:`~.cardiac.cardiac_function` with ``flags``) completed into ``cardiac_function.json``'s
    content: ``ed_es_source``, ``co_l_per_min`` in ``lv`` / ``rv``, ``body`` (:func:`body_size`; ``size_plausible``
    false also for :func:`indexed_flags`), the keys of :func:`heart_rate`, ``indexed`` (:func:`indexed_function`),
    ``conventions`` (:func:`conventions`), the new flags appended to ``flags``. The existing keys keep their values.

    Args:
        function: the result so far.
        info: the study's ``info.json``.
        tags: the source DICOM series' tags, None for a NIfTI study.
        affine: (4, 4) the label map's affine.
        study_dir: the study folder, for messages.
    """
    body, body_flags = body_size(info, tags, study_dir)
    rhythm, rhythm_flags = heart_rate(tags)
    out = dict(function)
    out["ed_es_source"] = ed_es_source(function["ed_source"], function["es_source"])
    bpm = rhythm["heart_rate_bpm"]
    for name in ("lv", "rv"):
        sv = function[name]["sv_ml"]
        out[name] = {**function[name], "co_l_per_min": None if bpm is None else round(sv * bpm / 1000.0, 3)}
    out.update(body=body, **rhythm)
    out["indexed"] = indexed_function(out, body)
    size_flags = indexed_flags(out, out["indexed"])
    if size_flags:
        body["size_plausible"] = False
    out["flags"] = [*function.get("flags", []), *body_flags, *size_flags, *rhythm_flags]
    out["conventions"] = conventions(affine, tags)
    return out


def _value(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


PICTURE_TITLES = {
    "volume_curve.png": "LV and RV volume over the cycle",
    "montage.png": "Slices × phases (ED, mid-systole, ES, mid-diastole)",
    "middle_slice.gif": "Middle slice over the cycle",
}


def format_report(function: Mapping[str, Any], pictures: Sequence[str] = ()) -> str:
    """``report.md``: the study's function table (values, BSA- and height-indexed), body size, heart rate, ED/ES and
    their source, the conventions, the sanity flags and the pictures.

    Args:
        function: the content of ``cardiac_function.json`` (:func:`clinical_context`).
        pictures: file names beside the report to link (none when pictures are off).
    Returns:
        the markdown text.
    """
    lv, rv, ix, body = function["lv"], function["rv"], function["indexed"], function["body"]
    h = f"/m{'' if HEIGHT_POWER == 1 else f'^{HEIGHT_POWER:g}'}"
    rows = [("EDV", "mL", "edv_ml"), ("ESV", "mL", "esv_ml"), ("SV", "mL", "sv_ml")]
    lines = [f"# Cardiac function: {function['study']}", "", "| | unit | LV | RV |", "|---|---|---:|---:|"]
    for label, unit, key in rows:
        lines.append(f"| {label} | {unit} | {_value(lv[key])} | {_value(rv[key])} |")
        lines.append(
            f"| {label} / BSA | {unit}/m² | {_value(ix['lv'][key + '_per_m2'])} | "
            f"{_value(ix['rv'][key + '_per_m2'])} |"
        )
        lines.append(
            f"| {label} / height | {unit}{h} | {_value(ix['lv'][key + '_per_m'])} | "
            f"{_value(ix['rv'][key + '_per_m'])} |"
        )
    lines += [
        f"| EF | % | {_value(lv['ef_percent'])} | {_value(rv['ef_percent'])} |",
        f"| Cardiac output | L/min | {_value(lv['co_l_per_min'], 2)} | {_value(rv['co_l_per_min'], 2)} |",
        f"| Cardiac index | L/min/m² | {_value(ix['lv']['ci_l_per_min_per_m2'], 2)} | "
        f"{_value(ix['rv']['ci_l_per_min_per_m2'], 2)} |",
        f"| LV mass (ED) | g | {_value(function['lv_mass_g'])} | |",
        f"| LV mass / BSA | g/m² | {_value(ix['lv_mass_g_per_m2'])} | |",
        f"| LV mass / height | g{h} | {_value(ix['lv_mass_g_per_m'])} | |",
        "",
        "## Patient and acquisition",
        "",
        f"- Height: {_known(body['height_cm'], 'cm', body['height_source'])}; weight: "
        f"{_known(body['weight_kg'], 'kg', body['weight_source'])}; BSA: "
        + ("n/a (height and weight needed)" if body["bsa_m2"] is None else f"{body['bsa_m2']:.2f} m² ({BSA_FORMULA})")
        + ("" if body.get("bmi_kg_per_m2") is None else f"; BMI: {body['bmi_kg_per_m2']:.1f} kg/m²")
        + (" (implausible: see the sanity flags)" if body.get("size_plausible") is False else ""),
        "- Heart rate: "
        + (
            "n/a (no DICOM timing)"
            if function["heart_rate_bpm"] is None
            else f"{function['heart_rate_bpm']:.0f} bpm (RR {function['rr_interval_ms']:.0f} ms, "
            f"{function['heart_rate_source']})"
        ),
        f"- ED phase t = {function['ed_phase']}, ES phase t = {function['es_phase']} (0-based; from "
        f"{function['ed_es_source']})",
        "",
        "## Conventions",
        "",
    ]
    conv = function["conventions"]
    thickness = conv["slice_thickness_mm"]
    lines += [
        f"- Papillary muscles and trabeculae: {conv['papillary_muscles_trabeculae']}.",
        f"- Slices: {conv['slices']}.",
        f"- Volumes: {conv['volume_method']}. Slice spacing {conv['slice_spacing_mm']:g} mm, slice thickness "
        + ("unknown (NIfTI input)" if thickness is None else f"{thickness:g} mm")
        + f", pixel spacing {' × '.join(f'{s:g}' for s in conv['pixel_spacing_mm'])} mm.",
        f"- LV mass: myocardial volume at ED × {function['myocardial_density_g_per_ml']:g} g/mL.",
        f"- Indexed: to BSA ({conv['bsa_formula']}) and to height ({conv['height_index']}).",
        f"- Heart rate: {conv['heart_rate']}; cardiac output = SV × heart rate.",
        "",
        "## Sanity flags",
        "",
    ]
    lines += [f"- {flag}" for flag in function["flags"]] or ["None."]
    if pictures:
        lines += ["", "## Pictures", ""]
        lines += [f"![{PICTURE_TITLES.get(name, name)}]({name})" + "\n" for name in pictures]
    return "\n".join(lines).rstrip("\n") + "\n"


def _known(value: float | None, unit: str, source: str | None) -> str:
    return "n/a" if value is None else f"{value:g} {unit} ({source})"
