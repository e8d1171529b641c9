"""The DICOM objects that carry a study's pneumonia result back to PACS: pure builders, no I/O.

- ``build_sr``: a Comprehensive 3D SR following PS3.16 TID 1500 (Measurement Report), built with
  highdicom's template classes, in the same study as its sources and in a new series.
- ``build_secondary_capture``: an RGB Secondary Capture image (PS3.3 A.8.1) of the radiograph with
  the Grad-CAM heat map and a text banner burned in, for viewers that cannot show SRs.

Both carry Manufacturer ``core.config.PRODUCER_MANUFACTURER``: the gateway never selects objects
with that manufacturer, so sending these to a PACS that routes them back cannot start a loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from pydicom import DataElement, Dataset, config
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_ROOT_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import validate_value

from core.config import PRODUCER_MANUFACTURER

# --- Codes ----------------------------------------------------------------------------------------

PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
"""Finding type of the TID 1501 group, and the concept name of its qualitative evaluation."""

PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
"""Values of the Pneumonia evaluation, from PS3.16 CID 240 "Present-Absent"."""

PROBABILITY = Code("122157", "DCM", "Probability")
"""Concept name of the numeric measurement (TID 300) holding P(pneumonia)."""

NO_UNITS = Code("1", "UCUM", "no units")
"""UCUM unit of a probability (PS3.16 CID 7181)."""

PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
"""Procedure reported (TID 1500; its CID 100 is extensible and lists no chest radiograph): the
SNOMED CT procedure for a chest radiograph of any view and count, which is what the worker selects
(CR/DX, CHEST, PA/AP)."""

COMMENT = Code("121106", "DCM", "Comment")
"""Concept name of the TEXT item stating what the result is and is not."""

REPORT_TITLE = Code("126000", "DCM", "Imaging Measurement Report")
"""Document title (TID 1500, PS3.16 CID 7021 "Measurement Report Document Titles")."""

DEVICE_OBSERVER = Code("121007", "DCM", "Device")
"""Observer type (TID 1002, PS3.16 CID 270 "Observer Type")."""

# --- Attributes of what this system creates -------------------------------------------------------

SR_SERIES_DESCRIPTION = "AI triage result (pneumonia) - not for diagnosis"
SC_SERIES_DESCRIPTION = "AI triage image (pneumonia) - not for diagnosis"
TRACKING_IDENTIFIER = "AI pneumonia triage of the study"
BANNER_TITLE = "AI TRIAGE - NOT FOR DIAGNOSIS"

SC_MAX_SIDE = 1024
"""Longest side of the radiograph in the secondary capture, in pixels."""

HEAT_MAP_MAX_ALPHA = 0.5
"""Opacity of the colour map where the heat map is 1; it falls linearly to 0 (no tint) at 0."""

HEAT_MAP_COLOUR_MAP = "jet"

_PATIENT_STUDY_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
"""Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1).

highdicom reads them from the first source; a source may lack them (old or anonymised files), and
an empty value is what the standard asks for then."""

_CHECKED_VRS = frozenset({"AS", "DA", "DT", "TM"})


@dataclass(frozen=True)
class ModelIdentity:
    """What the reports say about the model; from its ``model_card.json``."""

    name: str
    version: str
    device_uid: str
    threshold: float

    def __post_init__(self) -> None:
        for field, value in (("name", self.name), ("version", self.version)):
            if not value.strip():
                raise ValueError(f"model {field} is empty")
            # TEXT items allow more, but the name is also the device's name and model name (LO).
            validate_value("LO", value, validation_mode=config.RAISE)
            if not value.isascii():
                # The reports take their character set from the source images.
                raise ValueError(f"model {field} {value!r} is not ASCII")
        validate_value("UI", self.device_uid, validation_mode=config.RAISE)
        if not self.device_uid:
            raise ValueError("model device UID is empty")
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"model threshold must be in [0, 1], got {self.threshold!r}")


@dataclass(frozen=True)
class StudyFinding:
    """A study's pneumonia result."""

    probability: float
    """P(pneumonia) for the study, in [0, 1]."""
    positive: bool
    """``probability >= threshold`` of the model that produced it."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.probability) and 0.0 <= self.probability <= 1.0):
            raise ValueError(f"pneumonia probability must be in [0, 1], got {self.probability!r}")


def _check_consistent(finding: StudyFinding, model: ModelIdentity) -> None:
    """A report whose verdict contradicts its own probability and threshold is never built."""
    if finding.positive != (finding.probability >= model.threshold):
        raise ValueError(
            f"finding says positive={finding.positive} but probability {finding.probability} "
            f"is {'at or above' if finding.probability >= model.threshold else 'below'} "
            f"the threshold {model.threshold}"
        )


def _is_bulk(tag: BaseTag) -> bool:
    """Pixel data (group 7FE0) and overlay data (60xx,3000): megabytes no header needs."""
    return tag.group == 0x7FE0 or (0x6000 <= tag.group <= 0x601E and tag.element == 0x3000)


def _is_malformed(element: DataElement) -> bool:
    """A date, time, date-time or age not in its PS3.5 6.2 format (``1995.07.20``, ``58``).

    These are the malformed values real headers carry; copied into a report they make it fail
    validation. Values of other VRs are copied as they are.
    """
    if element.VR not in _CHECKED_VRS or element.value is None:
        return False
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    try:
        for value in values:
            validate_value(element.VR, str(value), config.RAISE)
    except ValueError:
        return True
    return False


def _header(source: Dataset) -> Dataset:
    """A copy of a source's attributes for highdicom to read patient and study information from.

    No bulk data. Type 2 patient and study attributes that are absent or malformed are present and
    empty (highdicom reads them unconditionally); other malformed ones are left out.
    """
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not source.get(keyword):
            raise ValueError(f"source image has no {keyword}")
    header = Dataset()
    for element in source:
        if not _is_bulk(element.tag) and not _is_malformed(element):
            header.add(copy.deepcopy(element))
    for keyword in _PATIENT_STUDY_TYPE_2:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def _headers(sources: Sequence[Dataset]) -> list[Dataset]:
    """Headers of the sources, checked to be distinct images of one study of one patient."""
    if not sources:
        raise ValueError("no source images")
    headers = [_header(ds) for ds in sources]
    for keyword in ("StudyInstanceUID", "PatientID"):
        values = {str(h.get(keyword) or "") for h in headers}
        if len(values) > 1:
            raise ValueError(f"source images differ in {keyword}: {sorted(values)}")
    uids = [str(h.SOPInstanceUID) for h in headers]
    if len(set(uids)) != len(uids):
        raise ValueError("a source image is given more than once")
    return headers


def _verdict(finding: StudyFinding, model: ModelIdentity) -> str:
    return (
        f"Pneumonia {'POSITIVE' if finding.positive else 'NEGATIVE'}: "
        f"probability {finding.probability:.3f}, operating threshold {model.threshold:.3f}"
    )


def _disclaimer(finding: StudyFinding, model: ModelIdentity) -> str:
    """The statement every report carries: what the result is, and that it is not a diagnosis."""
    return (
        f"AI triage result, not a diagnosis: it must be verified by a radiologist. "
        f"{_verdict(finding, model)} (pneumonia is reported present when the probability is "
        f"at or above the threshold). Model {model.name} {model.version}."
    )


def _tracking_uid(study_instance_uid: str, uid_root: str) -> str:
    """Tracking Unique Identifier (TID 4108) of the study's pneumonia finding.

    Derived from the study, not random: every revision of the study's report tracks the same
    finding, as the UID is meant to across reports.
    """
    return str(
        generate_uid(
            uid_root,
            entropy_srcs=[study_instance_uid, PNEUMONIA.value, PNEUMONIA.scheme_designator],
        )
    )


def build_sr(
    sources: Sequence[Dataset],
    finding: StudyFinding,
    model: ModelIdentity,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    previous: Dataset | None = None,
    uid_root: str = PYDICOM_ROOT_UID,
) -> hd.sr.Comprehensive3DSR:
    """The study's result as a Comprehensive 3D SR with a TID 1500 Measurement Report.

    ``sources`` are the images the result was computed from, all of one study (headers suffice:
    they may have been read with ``stop_before_pixels=True``). ``previous`` is the report this one
    revises; it is referenced in the Predecessor Documents Sequence (SR Document General
    Module, PS3.3 C.17.2). ``uid_root`` roots the tracking UID.

    Content tree (PS3.16):

    - TID 1500 root "Imaging Measurement Report": language, TID 1001 observation context with the
      model as DEVICE observer (TID 1002/1004), procedure reported "Plain chest X-ray".
    - One TID 1501 measurement group for the study: tracking identifier and UID (TID 4108), finding
      Pneumonia, algorithm name, version and operating threshold (TID 4019), the probability as
      a TID 300 measurement (no units), the evaluation Pneumonia = Present/Absent, and every
      source image as "Source of Measurement".
    - A TEXT "Comment" in the root container (TID 1500 is extensible) saying that this is an AI
      triage result, not a diagnosis, with the threshold.

    The document is COMPLETE (it holds all its content), UNVERIFIED and PRELIMINARY (PS3.3
    C.17.2): nobody accountable has verified it, and a radiologist's report is the final one.
    """
    _check_consistent(finding, model)
    headers = _headers(sources)
    study_instance_uid = str(headers[0].StudyInstanceUID)
    if series_instance_uid in {str(h.SeriesInstanceUID) for h in headers}:
        raise ValueError("the report needs a series of its own, not a source image's series")
    if previous is not None:
        if str(previous.StudyInstanceUID) != study_instance_uid:
            raise ValueError("the previous report belongs to another study")
        if str(previous.SOPInstanceUID) == sop_instance_uid:
            raise ValueError("a revised report needs a new SOP Instance UID")

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=model.device_uid,
        name=model.name,
        manufacturer_name=PRODUCER_MANUFACTURER,
        model_name=model.name,
    )
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(DEVICE_OBSERVER),
            observer_identifying_attributes=device,
        )
    )
    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"operating threshold {model.threshold}"],
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_tracking_uid(study_instance_uid, uid_root), identifier=TRACKING_IDENTIFIER
        ),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=PROBABILITY, value=float(finding.probability), unit=NO_UNITS)
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=PNEUMONIA, value=PRESENT if finding.positive else ABSENT
            )
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in headers],
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=[group],
        title=REPORT_TITLE,
    )
    report[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=COMMENT,
            value=_disclaimer(finding, model),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return hd.sr.Comprehensive3DSR(
        evidence=headers,
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=PRODUCER_MANUFACTURER,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        series_description=SR_SERIES_DESCRIPTION,
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=[previous] if previous is not None else None,
    )


# --- Secondary capture ----------------------------------------------------------------------------

FloatImage = NDArray[np.float32]
RGBImage = NDArray[np.uint8]

_BANNER_BACKGROUND = (0, 0, 0)
_BANNER_TITLE_COLOUR = (255, 200, 0)
_BANNER_TEXT_COLOUR = (255, 255, 255)


def _check_unit_image(name: str, image: NDArray[Any]) -> FloatImage:
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {image.shape}")
    values = np.asarray(image, dtype=np.float32)
    if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        raise ValueError(f"{name} values must be finite and in [0, 1]")
    return values


def _fit(display: FloatImage) -> Image.Image:
    """The display image as 8-bit grayscale, shrunk (never enlarged) to ``SC_MAX_SIDE``."""
    image = Image.fromarray(np.round(display * 255.0).astype(np.uint8))
    scale = SC_MAX_SIDE / max(image.size)
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def _overlay(gray: Image.Image, heat_map: FloatImage | None) -> RGBImage:
    """The radiograph in RGB with the heat map blended in where it is above zero.

    The heat map is stretched to the image in each axis separately: a Grad-CAM map is computed on
    the model's square input, which is the whole image stretched (``core.preprocess``).
    Opacity grows with the map's value, so regions without evidence keep their original pixels.
    """
    rgb = np.repeat(np.asarray(gray, dtype=np.float32)[..., np.newaxis], 3, axis=2)
    if heat_map is not None:
        from matplotlib import colormaps  # here: only this needs matplotlib, slow to import

        heat = np.asarray(
            Image.fromarray(heat_map).resize(gray.size, Image.Resampling.BILINEAR),
            dtype=np.float32,
        ).clip(0.0, 1.0)
        colour = colormaps[HEAT_MAP_COLOUR_MAP](heat)[..., :3] * 255.0
        alpha = (HEAT_MAP_MAX_ALPHA * heat)[..., np.newaxis]
        rgb = rgb * (1.0 - alpha) + colour * alpha
    overlaid: RGBImage = np.round(rgb).clip(0, 255).astype(np.uint8)
    return overlaid


def banner_lines(finding: StudyFinding, model: ModelIdentity) -> list[str]:
    """The text burned into the secondary capture, one string per line."""
    return [BANNER_TITLE, _verdict(finding, model), f"Model {model.name} {model.version}"]


def _with_banner(image: RGBImage, lines: Sequence[str]) -> RGBImage:
    """``image`` below a black banner holding ``lines``.

    The banner is added above the image, not drawn over it, so no anatomy (the lung apices are at
    the top) is hidden. The font scales with the image; when the text is wider than a small image,
    the canvas is widened and the image centred, so the text is never cut off.
    """
    height, width = image.shape[:2]
    font = ImageFont.load_default(size=max(12, round(max(width, height) / 48)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [measure.textbbox((0, 0), line, font=font) for line in lines]
    line_height = math.ceil(max(box[3] for box in boxes))
    margin = max(4, line_height // 2)
    canvas_width = max(width, math.ceil(max(box[2] for box in boxes)) + 2 * margin)
    banner_height = len(lines) * line_height + (len(lines) + 1) * margin

    canvas = Image.new("RGB", (canvas_width, banner_height + height), _BANNER_BACKGROUND)
    canvas.paste(Image.fromarray(image), ((canvas_width - width) // 2, banner_height))
    draw = ImageDraw.Draw(canvas)
    for index, line in enumerate(lines):
        colour = _BANNER_TITLE_COLOUR if index == 0 else _BANNER_TEXT_COLOUR
        draw.text((margin, margin + index * (line_height + margin)), line, fill=colour, font=font)
    result: RGBImage = np.asarray(canvas, dtype=np.uint8)
    return result


def render_secondary_capture(
    display: NDArray[Any],
    heat_map: NDArray[Any] | None,
    finding: StudyFinding,
    model: ModelIdentity,
) -> RGBImage:
    """The secondary capture's pixels: banner above the (overlaid) radiograph, RGB uint8."""
    gray = _fit(_check_unit_image("display image", display))
    heat = None if heat_map is None else _check_unit_image("heat map", heat_map)
    return _with_banner(_overlay(gray, heat), banner_lines(finding, model))


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation (PS3.3 C.7.6.1.1.1) when it has both values."""
    values = source.get("PatientOrientation")
    if values is None or isinstance(values, str) or len(values) != 2 or not all(values):
        return None
    return str(values[0]), str(values[1])


def build_secondary_capture(
    source: Dataset,
    display: NDArray[Any],
    finding: StudyFinding,
    model: ModelIdentity,
    *,
    heat_map: NDArray[Any] | None,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture image (PS3.3 A.8.1) of the result, for viewers without SR support.

    ``display`` is ``source``'s display image (``core.preprocess.display_from_dicom``: 2-D, values
    in [0, 1], rows and columns as stored); ``heat_map`` a Grad-CAM map in [0, 1] of any size, or
    None for no overlay. The picture is a banner ("AI TRIAGE - NOT FOR DIAGNOSIS", the result at
    the operating threshold, the model) above the radiograph, shrunk to at most ``SC_MAX_SIDE``
    pixels on its long side, with the heat map blended in a colour map.

    Patient and study come from ``source`` (same study, new series). Burned In Annotation is YES:
    the pixels carry text, and they may carry the source's own burned-in annotations; Lossy Image
    Compression is carried over when the source was lossy (it may never be reset, C.7.6.1.1.5).
    Patient Orientation is the source's, since the image is not rotated or flipped; empty (Type 2)
    when the source has none.
    """
    _check_consistent(finding, model)
    header = _header(source)
    if series_instance_uid == str(header.SeriesInstanceUID):
        raise ValueError("the secondary capture needs a series of its own")
    pixels = render_secondary_capture(display, heat_map, finding, model)
    orientation = _patient_orientation(header)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=PRODUCER_MANUFACTURER,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        series_description=SC_SERIES_DESCRIPTION,
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if orientation is None:
        # highdicom needs a value for the PATIENT coordinate system; an unknown one is empty.
        sc.PatientOrientation = []
    # What the SR's procedure says (the worker reports chest radiographs only), as the PS3.16
    # Annex L term; the chest is unpaired, so General Series Laterality (Type 2C) is absent.
    sc.BodyPartExamined = "CHEST"
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"  # rendered by software (PS3.3 C.8.6.1), not captured from a device
    sc.DerivationDescription = "AI triage display: radiograph, Grad-CAM heat map, result banner"
    reference = Dataset()
    reference.ReferencedSOPClassUID = header.SOPClassUID
    reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    if header.get("LossyImageCompression") == "01":
        for keyword in (
            "LossyImageCompression",
            "LossyImageCompressionRatio",
            "LossyImageCompressionMethod",
        ):
            if keyword in header:
                sc[keyword] = copy.deepcopy(header[keyword])
    return sc
