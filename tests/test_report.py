"""The report builders on real chest radiographs, checked by dciodvfy, dsrdump and highdicom."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_ROOT_UID, ImplicitVRLittleEndian, generate_uid

from core.config import PRODUCER_MANUFACTURER
from core.preprocess import display_from_dicom
from worker.report import (
    ABSENT,
    BANNER_TITLE,
    COMMENT,
    NO_UNITS,
    PNEUMONIA,
    PRESENT,
    PROBABILITY,
    SC_MAX_SIDE,
    ModelIdentity,
    StudyFinding,
    banner_lines,
    build_secondary_capture,
    build_sr,
    render_secondary_capture,
)

MODEL = ModelIdentity(
    name="cxr-triage-pneumonia", version="1.2.0", device_uid=generate_uid(), threshold=0.42
)
POSITIVE = StudyFinding(probability=0.87, positive=True)
NEGATIVE = StudyFinding(probability=0.1, positive=False)

# Two real images of different patients, made one study of one patient in memory.
STUDY_FILES = ("000_A_DX_normal.dcm", "013_B_CR_pneumonia.dcm")
SC_SOURCE = "000_A_DX_normal.dcm"  # JPEG Baseline (lossy), 1963 rows x 2024 columns


def _new_uids(instance_number: int = 1) -> dict[str, Any]:
    return {
        "series_instance_uid": generate_uid(),
        "series_number": 901,
        "sop_instance_uid": generate_uid(),
        "instance_number": instance_number,
    }


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def dciodvfy(ds: Dataset, directory: Path) -> tuple[list[str], list[str]]:
    """Write ``ds`` to a file and validate it: dciodvfy's (errors, warnings)."""
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path)
    result = subprocess.run(
        [_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    return (
        [line for line in lines if line.startswith("Error")],
        [line for line in lines if line.startswith("Warning")],
    )


@pytest.fixture(scope="module")
def study(labelled_dicom_dir: Path) -> list[Dataset]:
    """Headers only, as the worker reads them for a report."""
    first, second = (
        dcmread(labelled_dicom_dir / name, stop_before_pixels=True) for name in STUDY_FILES
    )
    second.StudyInstanceUID = first.StudyInstanceUID
    second.PatientID = first.PatientID
    return [first, second]


@pytest.fixture(scope="module")
def sc_source(labelled_dicom_dir: Path) -> tuple[Dataset, np.ndarray]:
    ds = dcmread(labelled_dicom_dir / SC_SOURCE)
    return ds, display_from_dicom(ds)


def _report(sr: Dataset) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree of an SR, as highdicom parses it from the dataset."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def _read_without_meta(path: Path) -> Dataset:
    ds = dcmread(path, force=True)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


# --- Structured report ----------------------------------------------------------------------------


def test_sr_passes_dciodvfy_without_errors_or_warnings(
    study: list[Dataset], tmp_path: Path
) -> None:
    sr = build_sr(study, POSITIVE, MODEL, **_new_uids())
    errors, warnings = dciodvfy(sr, tmp_path)
    assert errors == []
    assert warnings == []


def test_dsrdump_shows_the_evaluation_and_the_probability(
    study: list[Dataset], tmp_path: Path
) -> None:
    path = tmp_path / "sr.dcm"
    build_sr(study, POSITIVE, MODEL, **_new_uids()).save_as(path)
    result = subprocess.run(
        [_tool("dsrdump"), "+Pc", "+Pl", "+Pu", "+Pt", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "TID 1500 (DCMR)" in result.stdout and "TID 1501 (DCMR)" in result.stdout
    assert '<contains CODE:(233604007,SCT,"Pneumonia")=(52101004,SCT,"Present")>' in result.stdout
    assert '<contains NUM:(122157,DCM,"Probability")="0.87" (1,UCUM,"no units")>' in result.stdout
    assert "Verification Flag   : UNVERIFIED" in result.stdout
    for ds in study:
        assert f"{ds.SOPInstanceUID}" in result.stdout
    assert "not a diagnosis" in result.stdout


def test_highdicom_reads_back_what_was_given(study: list[Dataset], tmp_path: Path) -> None:
    uids = _new_uids()
    path = tmp_path / "sr.dcm"
    build_sr(study, POSITIVE, MODEL, **uids).save_as(path)
    sr = hd.sr.srread(path)

    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.Manufacturer == PRODUCER_MANUFACTURER
    assert "AI triage" in sr.SeriesDescription
    assert sr.StudyInstanceUID == study[0].StudyInstanceUID
    assert sr.PatientID == study[0].PatientID
    assert sr.PatientName == study[0].PatientName
    assert sr.SeriesInstanceUID == uids["series_instance_uid"]
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in study}
    assert sr.SOPInstanceUID == uids["sop_instance_uid"]
    assert "PixelData" not in sr

    [device] = _report(sr).get_observer_contexts(observer_type=codes.DCM.Device)
    attributes = device.observer_identifying_attributes
    assert isinstance(attributes, hd.sr.DeviceObserverIdentifyingAttributes)
    assert attributes.uid == MODEL.device_uid
    assert attributes.name == MODEL.name
    assert attributes.manufacturer_name == PRODUCER_MANUFACTURER

    [group] = _report(sr).get_image_measurement_groups()
    assert group.finding_type == PNEUMONIA
    [evaluation] = group.get_qualitative_evaluations(name=PNEUMONIA)
    assert evaluation.value == PRESENT
    [probability] = group.get_measurements(name=PROBABILITY)
    assert probability.value == pytest.approx(0.87)
    assert probability.unit == NO_UNITS
    algorithm = {
        item.name.meaning: item.value
        for item in hd.sr.utils.find_content_items(group[0], value_type=hd.sr.ValueTypeValues.TEXT)
    }
    assert algorithm["Algorithm Name"] == MODEL.name
    assert algorithm["Algorithm Version"] == MODEL.version
    assert [image.referenced_sop_instance_uid for image in group.source_images] == [
        ds.SOPInstanceUID for ds in study
    ]
    evidence = {uid for _, _, uid, _ in sr.get_evidence()}
    assert evidence == {ds.SOPInstanceUID for ds in study}

    [comment] = hd.sr.utils.find_content_items(sr.content[0], name=COMMENT)
    assert "not a diagnosis" in comment.value
    assert "radiologist" in comment.value
    assert "threshold 0.420" in comment.value


def test_absent_when_negative(study: list[Dataset], tmp_path: Path) -> None:
    sr = build_sr(study, NEGATIVE, MODEL, **_new_uids())
    [group] = _report(sr).get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations(name=PNEUMONIA)
    assert evaluation.value == ABSENT
    assert group.get_measurements(name=PROBABILITY)[0].value == pytest.approx(0.1)
    [comment] = hd.sr.utils.find_content_items(sr.content[0], name=COMMENT)
    assert "NEGATIVE" in comment.value
    assert dciodvfy(sr, tmp_path)[0] == []


def test_revised_report_references_its_predecessor(study: list[Dataset], tmp_path: Path) -> None:
    first = build_sr(study[:1], NEGATIVE, MODEL, **_new_uids(1))
    revised = build_sr(
        study,
        POSITIVE,
        MODEL,
        **_new_uids(2),
        previous=first,
    )
    [study_item] = revised.PredecessorDocumentsSequence
    assert study_item.StudyInstanceUID == first.StudyInstanceUID
    [series_item] = study_item.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == first.SeriesInstanceUID
    [instance] = series_item.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == first.SOPClassUID
    assert "PredecessorDocumentsSequence" not in first
    # Both revisions track the same finding.
    assert (
        _report(revised).get_image_measurement_groups()[0].tracking_uid
        == _report(first).get_image_measurement_groups()[0].tracking_uid
    )
    assert dciodvfy(revised, tmp_path)[0] == []


def test_the_tracking_uid_is_under_the_sites_root(study: list[Dataset]) -> None:
    site = build_sr(study, POSITIVE, MODEL, **_new_uids(), uid_root="1.2.840.99999.")
    default = build_sr(study, POSITIVE, MODEL, **_new_uids())
    site_uid = str(_report(site).get_image_measurement_groups()[0].tracking_uid)
    default_uid = str(_report(default).get_image_measurement_groups()[0].tracking_uid)
    assert site_uid.startswith("1.2.840.99999.")
    assert default_uid.startswith(PYDICOM_ROOT_UID)
    assert site_uid.removeprefix("1.2.840.99999.") != default_uid.removeprefix(PYDICOM_ROOT_UID)


@pytest.mark.parametrize("probability", [-0.01, 1.01, float("nan"), float("inf")])
def test_probability_outside_0_1_is_rejected(probability: float) -> None:
    with pytest.raises(ValueError, match=r"probability must be in \[0, 1\]"):
        StudyFinding(probability=probability, positive=True)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", " ", "name is empty"),
        ("name", "x" * 65, "LO"),
        ("version", "1.0-\u03b2", "not ASCII"),
        ("device_uid", "1.2.abc", "UI"),
        ("threshold", 1.5, r"threshold must be in \[0, 1\]"),
    ],
)
def test_model_identity_is_checked(field: str, value: object, message: str) -> None:
    fields: dict[str, Any] = {
        "name": MODEL.name,
        "version": MODEL.version,
        "device_uid": MODEL.device_uid,
        "threshold": MODEL.threshold,
    }
    with pytest.raises(ValueError, match=message):
        ModelIdentity(**(fields | {field: value}))


def test_verdict_contradicting_the_threshold_is_rejected(study: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="threshold"):
        build_sr(study, StudyFinding(0.3, positive=True), MODEL, **_new_uids())
    with pytest.raises(ValueError, match="threshold"):
        build_sr(study, StudyFinding(0.42, positive=False), MODEL, **_new_uids())


def test_sources_of_two_studies_are_rejected(study: list[Dataset]) -> None:
    other = copy.deepcopy(study[1])
    other.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        build_sr([study[0], other], POSITIVE, MODEL, **_new_uids())


def test_previous_report_of_another_study_is_rejected(study: list[Dataset]) -> None:
    previous = build_sr(study, POSITIVE, MODEL, **_new_uids())
    previous.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="another study"):
        build_sr(study, POSITIVE, MODEL, **_new_uids(2), previous=previous)


def test_report_in_a_source_series_is_rejected(study: list[Dataset]) -> None:
    uids = _new_uids() | {"series_instance_uid": study[0].SeriesInstanceUID}
    with pytest.raises(ValueError, match="series of its own"):
        build_sr(study, POSITIVE, MODEL, **uids)


@pytest.mark.parametrize(
    "name", ["cr_mono1_10bit_no_file_meta.dcm", "nih_dx_chest_implicit_vr.dcm"]
)
@pytest.mark.filterwarnings('ignore:The string "Anonymized":UserWarning')  # that file's name
def test_sources_with_missing_or_malformed_headers(
    dicom_samples_dir: Path, tmp_path: Path, name: str
) -> None:
    # The first lacks Patient ID, Study Date and Study ID and has dates like 1995.07.20; the second
    # lacks Patient's Name and Study Date and has Patient's Age "58". Read with their pixel data.
    source = _read_without_meta(dicom_samples_dir / name)
    before = source.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda _: "")
    sr = build_sr([source], POSITIVE, MODEL, **_new_uids())
    assert dciodvfy(sr, tmp_path)[0] == []
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert "PixelData" not in sr
    assert "PatientAge" not in sr or sr.PatientAge != "58"
    after = source.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda _: "")
    assert after == before  # the sources are not touched


# --- Secondary capture ----------------------------------------------------------------------------


def _image_region(sc: Dataset, source_shape: tuple[int, ...]) -> np.ndarray:
    """The radiograph's part of the secondary capture: the bottom rows, centred."""
    scale = min(1.0, SC_MAX_SIDE / max(source_shape))
    rows, columns = (round(side * scale) for side in source_shape)
    left = (sc.Columns - columns) // 2
    pixels: np.ndarray = sc.pixel_array
    return pixels[sc.Rows - rows :, left : left + columns]


def _banner_region(sc: Dataset, source_shape: tuple[int, ...]) -> np.ndarray:
    scale = min(1.0, SC_MAX_SIDE / max(source_shape))
    pixels: np.ndarray = sc.pixel_array
    return pixels[: sc.Rows - round(source_shape[0] * scale)]


def _heat_map() -> np.ndarray:
    """Evidence in the upper right quarter of the image only (8 x 8, as a small model's map)."""
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[1:3, 5:7] = 1.0
    return heat


def test_secondary_capture_is_a_valid_rgb_image_in_the_study(
    sc_source: tuple[Dataset, np.ndarray], tmp_path: Path
) -> None:
    ds, display = sc_source
    uids = _new_uids()
    sc = build_secondary_capture(ds, display, POSITIVE, MODEL, heat_map=_heat_map(), **uids)
    errors, warnings = dciodvfy(sc, tmp_path)
    assert errors == []
    assert warnings == []

    assert isinstance(sc, hd.sc.SCImage)
    assert sc.PhotometricInterpretation == "RGB"
    assert sc.SamplesPerPixel == 3
    assert sc.pixel_array.shape == (sc.Rows, sc.Columns, 3)
    assert sc.Columns == SC_MAX_SIDE  # 2024 wide: shrunk, the banner fits
    assert sc.StudyInstanceUID == ds.StudyInstanceUID
    assert sc.PatientID == ds.PatientID
    assert sc.PatientName == ds.PatientName
    assert sc.SeriesInstanceUID == uids["series_instance_uid"]
    assert sc.SeriesInstanceUID != ds.SeriesInstanceUID
    assert sc.Manufacturer == PRODUCER_MANUFACTURER
    assert sc.BurnedInAnnotation == "YES"
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert list(sc.PatientOrientation) == list(ds.PatientOrientation)
    assert sc.LossyImageCompression == "01"  # the source was JPEG Baseline
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID


def test_banner_carries_the_result(sc_source: tuple[Dataset, np.ndarray]) -> None:
    ds, display = sc_source
    positive = build_secondary_capture(ds, display, POSITIVE, MODEL, heat_map=None, **_new_uids())
    negative = build_secondary_capture(ds, display, NEGATIVE, MODEL, heat_map=None, **_new_uids())
    banner = _banner_region(positive, display.shape)
    assert banner.shape[0] > 0
    assert (banner.max(axis=2) > 128).sum() > 500  # text drawn on the black banner
    title = (banner[..., 0] > 200) & (banner[..., 1] > 150) & (banner[..., 2] < 80)
    assert title.sum() > 100  # the title in its warning colour
    assert not np.array_equal(banner, _banner_region(negative, display.shape))
    assert np.array_equal(
        _image_region(positive, display.shape), _image_region(negative, display.shape)
    )
    lines = banner_lines(POSITIVE, MODEL)
    assert lines[0] == BANNER_TITLE == "AI TRIAGE - NOT FOR DIAGNOSIS"
    assert "POSITIVE" in lines[1] and "0.870" in lines[1] and "0.420" in lines[1]
    assert MODEL.name in lines[2] and MODEL.version in lines[2]


def test_image_without_overlay_is_the_radiograph(sc_source: tuple[Dataset, np.ndarray]) -> None:
    ds, display = sc_source
    sc = build_secondary_capture(ds, display, POSITIVE, MODEL, heat_map=None, **_new_uids())
    image = _image_region(sc, display.shape).astype(np.int16)
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(
        image[..., 1], image[..., 2]
    )
    # The radiograph shrunk 2024 -> 1024: its mean brightness is kept.
    assert abs(image[..., 0].mean() / 255.0 - float(display.mean())) < 0.01


def test_overlay_changes_pixels_where_the_heat_map_is_high(
    sc_source: tuple[Dataset, np.ndarray],
) -> None:
    _, display = sc_source
    plain = render_secondary_capture(display, None, POSITIVE, MODEL).astype(np.int16)
    overlaid = render_secondary_capture(display, _heat_map(), POSITIVE, MODEL).astype(np.int16)
    assert plain.shape == overlaid.shape
    rows, columns = plain.shape[:2]
    image_rows = round(display.shape[0] * SC_MAX_SIDE / max(display.shape))
    top = rows - image_rows

    def cell(row: float, column: float) -> tuple[slice, slice]:
        """Pixels around a point given in the heat map's (8 x 8) coordinates."""
        r, c = top + int(row / 8 * image_rows), int(column / 8 * columns)
        return slice(r - 5, r + 5), slice(c - 5, c + 5)

    hot, cold = cell(2.0, 6.0), cell(6.0, 1.5)
    assert np.abs(overlaid[hot] - plain[hot]).mean() > 40
    assert np.abs(overlaid[hot][..., 0] - overlaid[hot][..., 2]).mean() > 40  # coloured, not grey
    assert np.array_equal(overlaid[cold], plain[cold])
    assert np.array_equal(overlaid[:top], plain[:top])  # the banner is not tinted


def test_small_image_without_orientation_and_odd_heat_map(
    dicom_samples_dir: Path, tmp_path: Path
) -> None:
    ds = dcmread(dicom_samples_dir / "dx_thorax_tiny.dcm")  # 169 rows x 211 columns
    display = display_from_dicom(ds)
    del ds.PatientOrientation
    heat = np.linspace(0.0, 1.0, 5 * 9, dtype=np.float32).reshape(5, 9)
    sc = build_secondary_capture(ds, display, NEGATIVE, MODEL, heat_map=heat, **_new_uids())
    assert dciodvfy(sc, tmp_path)[0] == []
    assert sc.Columns > display.shape[1]  # widened so that the banner's text fits
    assert _image_region(sc, display.shape).shape[:2] == display.shape  # never enlarged
    assert sc.PatientOrientation is None or len(sc.PatientOrientation) == 0


@pytest.mark.parametrize(
    ("display", "heat_map"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), None),
        (np.full((4, 4), 1.5, dtype=np.float32), None),
        (np.zeros((4, 4), dtype=np.float32), np.full((2, 2), np.nan, dtype=np.float32)),
    ],
    ids=["rgb-display", "display-above-1", "nan-heat-map"],
)
def test_bad_images_are_rejected(display: np.ndarray, heat_map: np.ndarray | None) -> None:
    with pytest.raises(ValueError, match=r"(display image|heat map)"):
        render_secondary_capture(display, heat_map, POSITIVE, MODEL)


def test_inconsistent_finding_gives_no_secondary_capture(
    sc_source: tuple[Dataset, np.ndarray],
) -> None:
    ds, display = sc_source
    with pytest.raises(ValueError, match="threshold"):
        build_secondary_capture(
            ds, display, StudyFinding(0.9, positive=False), MODEL, heat_map=None, **_new_uids()
        )
