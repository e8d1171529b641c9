"""Fixtures shared by every suite: where the real data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository, or ``CXR_SHARED_DATA``."""
    return Path(os.environ.get("CXR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def chest_xray_dir() -> Path:
    """The Kermany dataset in the Kaggle layout; skips the test when it is absent."""
    path = Path(os.environ.get("CXR_DATASET_DIR", shared_data_dir() / "chest_xray"))
    if not (path / "train").is_dir():
        pytest.skip(f"Kermany dataset not found at {path} (set CXR_DATASET_DIR)")
    return path


@pytest.fixture(scope="session")
def dicom_samples_dir() -> Path:
    """Real chest radiograph DICOMs; skips the test when they are absent."""
    path = Path(os.environ.get("CXR_DICOM_SAMPLES", shared_data_dir() / "dicom"))
    if not any(path.glob("*.dcm")):
        pytest.skip(f"chest radiograph DICOMs not found at {path} (set CXR_DICOM_SAMPLES)")
    return path


@pytest.fixture(scope="session")
def labelled_dicom_dir() -> Path:
    """The 24 labelled full-resolution DICOMs; skips the test when they are absent."""
    path = shared_data_dir() / "dicom_labelled"
    if not (path / "labels.csv").is_file():
        pytest.skip(f"labelled DICOMs not found at {path}")
    return path
