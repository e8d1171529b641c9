"""The shared preprocessing: DICOM grayscale pipeline (PS3.4 N.2) and the model-input resampling."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian

from core.preprocess import (
    DATASET_GRID,
    UnsupportedImage,
    apply_window,
    display_from_8bit,
    display_from_dicom,
    to_model_input,
)
from worker.preprocess import prepare


def test_linear_window_follows_the_standard_formula() -> None:
    # PS3.3 C.11.2.1.2.1: x <= c - 0.5 - (w-1)/2 -> 0; x > c - 0.5 + (w-1)/2 -> 1.
    values = np.array([-10.0, 0.0, 127.5, 255.0, 300.0])
    assert apply_window(values, center=128, width=256).tolist() == pytest.approx(
        [0.0, 0.0, 0.5, 1.0, 1.0]
    )
    assert apply_window(np.array([90.0]), 100, 21)[0] == pytest.approx((90 - 99.5) / 20 + 0.5)


def test_linear_exact_and_sigmoid_windows() -> None:
    assert apply_window(np.array([100.0, 110.0]), 100, 20, "LINEAR_EXACT").tolist() == [0.5, 1.0]
    sigmoid = apply_window(np.array([100.0, 200.0]), 100, 50, "SIGMOID")
    assert sigmoid[0] == pytest.approx(0.5)
    assert sigmoid[1] == pytest.approx(1 / (1 + np.exp(-8)))
    with pytest.raises(UnsupportedImage):
        apply_window(np.array([1.0]), 0, 0.5)
    with pytest.raises(UnsupportedImage):
        apply_window(np.array([1.0]), 0, 10, "CUBIC")


def test_monochrome1_is_shown_inverted(dicom_samples_dir: Path) -> None:
    plain = display_from_dicom(dcmread(dicom_samples_dir / "siim_cr_chest_jpeg_baseline.dcm"))
    inverted = display_from_dicom(
        dcmread(dicom_samples_dir / "siim_cr_chest_header_monochrome1.dcm")
    )
    np.testing.assert_allclose(inverted, 1.0 - plain, atol=1e-6)


def test_lossless_encodings_give_the_same_display(dicom_samples_dir: Path) -> None:
    uncompressed = display_from_dicom(dcmread(dicom_samples_dir / "RG1_UNCR.dcm"))
    jpeg2000 = display_from_dicom(dcmread(dicom_samples_dir / "RG1_J2KR.dcm"))
    np.testing.assert_array_equal(uncompressed, jpeg2000)
    lossy = display_from_dicom(dcmread(dicom_samples_dir / "RG1_J2KI.dcm"))
    assert np.abs(lossy - uncompressed).mean() < 0.01


def test_every_sample_gives_a_display_image_in_range(dicom_samples_dir: Path) -> None:
    for path in sorted(dicom_samples_dir.glob("*.dcm")):
        ds = dcmread(path, force=True)
        if "TransferSyntaxUID" not in ds.file_meta:  # old ACR-NEMA file without meta
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        display = display_from_dicom(ds)
        assert display.dtype == np.float32
        assert display.shape == ds.pixel_array.shape
        assert 0.0 <= display.min() < display.max() <= 1.0, path.name
        assert 0.1 < display.mean() < 0.9, path.name


def test_labelled_dicoms_match_their_dataset_jpegs(
    labelled_dicom_dir: Path, chest_xray_dir: Path
) -> None:
    """Train/serve parity of the pixels: windowing, rescale, MONOCHROME1, 12-bit, resampling."""
    with (labelled_dicom_dir / "labels.csv").open() as fp:
        rows = list(csv.DictReader(fp))
    assert len(rows) == 24
    for row in rows:
        served = to_model_input(display_from_dicom(dcmread(labelled_dicom_dir / row["file"])), 64)
        jpeg = np.asarray(Image.open(chest_xray_dir / row["source_jpeg"]).convert("RGB"))
        trained = to_model_input(display_from_8bit(jpeg), 64)
        assert np.abs(served - trained).mean() < 0.005, row["file"]


def test_model_input_is_stretched_onto_the_grid() -> None:
    wide = np.zeros((100, 300), dtype=np.float32)
    wide[:, 150:] = 1.0  # right half white
    model_input = to_model_input(wide, 32)
    assert model_input.shape == (32, 32, 1) and model_input.dtype == np.float32
    assert model_input[:, :15].max() < 0.05 and model_input[:, 17:].min() > 0.95
    already = np.random.default_rng(0).random((DATASET_GRID, DATASET_GRID)).astype(np.float32)
    np.testing.assert_array_equal(to_model_input(already, DATASET_GRID)[..., 0], already)


def test_colour_images_are_refused() -> None:
    ds = dcmread(str(get_testdata_file("SC_rgb.dcm")))
    with pytest.raises(UnsupportedImage, match="not grayscale"):
        display_from_dicom(ds)


@pytest.mark.parametrize(
    "name",
    [
        "JPEG-LL.dcm",
        "JPGExtended.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "JPEGLSNearLossless_16.dcm",
        "image_dfl.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "JPEG2000.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
    ],
)
def test_worker_decodes_every_transfer_syntax(name: str) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip("pydicom-data samples not installed")
    prepared = prepare(Path(str(path)), 64)
    assert prepared.model_input.shape == (64, 64, 1)
    assert 0.0 <= prepared.model_input.min() < prepared.model_input.max() <= 1.0
    assert prepared.outcome["timings_ms"]["decode"] >= 0
