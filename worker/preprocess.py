"""Reading a spooled DICOM file into the model's input: the I/O around ``core.preprocess``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread

from core.preprocess import FloatImage, preprocess_dicom


@dataclass(frozen=True)
class PreparedImage:
    """A model input and what it took to make it."""

    model_input: FloatImage
    outcome: dict[str, Any]


def prepare(path: Path, size: int) -> PreparedImage:
    """Decode a stored object's pixels and preprocess them; times each stage in milliseconds."""
    started = time.perf_counter()
    ds = dcmread(path)
    read = time.perf_counter()
    pixels = ds.pixel_array
    decoded = time.perf_counter()
    model_input = preprocess_dicom(ds, size, pixels)
    done = time.perf_counter()
    outcome = {
        "shape": list(model_input.shape),
        "source_shape": list(pixels.shape),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "")),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
        "mean": round(float(model_input.mean()), 6),
        "timings_ms": {
            "read": round((read - started) * 1000, 2),
            "decode": round((decoded - read) * 1000, 2),
            "preprocess": round((done - decoded) * 1000, 2),
        },
    }
    return PreparedImage(model_input, outcome)
