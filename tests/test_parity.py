"""Train/serve parity: the 24 labelled full-resolution DICOMs (JPEG Baseline, JPEG 2000 with
MONOCHROME1 and a rescale, RLE 12-bit, uncompressed AP), sent by storescu and scored by the worker,
match the same images' 224x224 JPEGs scored through the training code's path.

A gap here is a preprocessing bug to fix (windowing, MONOCHROME1, rescale, aspect, resampling),
not a tolerance to widen.
"""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
from pydicom import dcmread
from sqlalchemy import select

from core.settings import Settings
from db.models import Finding, Instance
from tests.node import Node, storescu
from training.data import preprocess_file
from training.evaluate import predict_probabilities
from worker.model import ModelCard


def test_dicoms_score_like_their_training_jpegs(
    embedded_node: Node, labelled_dicom_dir: Path, chest_xray_dir: Path
) -> None:
    with (labelled_dicom_dir / "labels.csv").open() as fp:
        rows = list(csv.DictReader(fp))
    files = [labelled_dicom_dir / row["file"] for row in rows]
    with embedded_node.gateway(), embedded_node.worker():
        sent = storescu(embedded_node.dicom_port, *files)
        assert sent.returncode == 0, sent.stderr
        embedded_node.wait_for_jobs(len(files), {"done", "failed"}, timeout=300)

    served = {
        uid: probability
        for uid, probability in embedded_node.query(
            select(Instance.sop_instance_uid, Finding.probability).join(Finding)
        )
    }
    model_path = Settings().model_path
    card = ModelCard.read(model_path)
    model = keras.saving.load_model(model_path, compile=False)
    jpegs = np.stack(
        [preprocess_file(chest_xray_dir / row["source_jpeg"], card.input_size) for row in rows]
    )
    trained = predict_probabilities(model, jpegs, desc="jpegs")

    gaps = []
    agree = 0
    for row, path, jpeg_probability in zip(rows, files, trained, strict=True):
        dicom_probability = served[dcmread(path, stop_before_pixels=True).SOPInstanceUID]
        gaps.append((abs(dicom_probability - jpeg_probability), row["file"]))
        agree += (dicom_probability >= card.threshold) == (jpeg_probability >= card.threshold)
    worst = max(gaps)
    assert worst[0] < 0.1, f"largest gap {worst[0]:.3f} on {worst[1]}"
    assert agree >= 23, f"labels agree on {agree} of 24"
