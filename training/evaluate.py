"""Batched prediction and the evaluation of a model on a split: ``metrics.json`` and plots.

A model is found by its path: a ``.keras`` file, a run directory (its ``best.keras``) or the
export directory. Its operating threshold comes from the ``model_card.json`` beside it, else the
run's ``validation/metrics.json``, else 0.5 (the argmax of a two-way softmax).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from training.data import Images, label_array, load_images
from training.metrics import Confusion, binary_metrics
from training.plots import History, plot_confusion, plot_history, plot_reliability, plot_roc
from training.split import (
    Sample,
    Split,
    list_samples,
    manifest_sha256,
    patient_split,
    read_manifest,
)

log = logging.getLogger(__name__)

CARD_NAME = "model_card.json"
HISTORY_NAME = "history.json"
MANIFEST_NAME = "split.csv"
RUN_CHECKPOINT = "best.keras"
EXPORTED_MODEL = "cxr_pneumonia.keras"
VALIDATION_DIR = "validation"
MODEL_FILES = (RUN_CHECKPOINT, EXPORTED_MODEL)


@dataclass(frozen=True)
class ModelBundle:
    """A model file and what lies beside it."""

    model_file: Path
    threshold: float
    card: dict[str, Any] | None
    histories: dict[str, History] | None

    @property
    def directory(self) -> Path:
        return self.model_file.parent


def locate(path: Path) -> ModelBundle:
    """The model at ``path`` (file or directory), its threshold, card and training history."""
    if path.is_dir():
        found = [path / name for name in MODEL_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no {' or '.join(MODEL_FILES)} in {path}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"model {path} not found")
    card_file = path.parent / CARD_NAME
    validation_file = path.parent / VALIDATION_DIR / "metrics.json"
    history_file = path.parent / HISTORY_NAME
    card = json.loads(card_file.read_text()) if card_file.is_file() else None
    if card is not None:
        threshold = float(card["threshold"])
    elif validation_file.is_file():
        threshold = float(json.loads(validation_file.read_text())["threshold"])
    else:
        threshold = 0.5
    histories = json.loads(history_file.read_text()) if history_file.is_file() else None
    return ModelBundle(path, threshold, card, histories)


def training_split(bundle: ModelBundle, data_dir: Path) -> Split:
    """The train/validation split the model was trained on.

    A run directory keeps its manifest; an exported model's card gives the seed and fraction, so
    the split is carved again and checked against the card's manifest sha256.
    """
    manifest = bundle.directory / MANIFEST_NAME
    if manifest.is_file():
        return read_manifest(manifest)
    if bundle.card is None:
        raise FileNotFoundError(f"neither {manifest} nor a model card to rebuild the split from")
    split_info = bundle.card["split"]
    split = patient_split(
        list_samples(data_dir, "train"), split_info["val_fraction"], split_info["seed"]
    )
    if manifest_sha256(split) != bundle.card["training_manifest_sha256"]:
        raise ValueError(f"the split of {data_dir} differs from the one the model was trained on")
    return split


def split_samples(bundle: ModelBundle, data_dir: Path, split: str) -> list[Sample]:
    if split == "test":
        return list_samples(data_dir, "test")
    carved = training_split(bundle, data_dir)
    return list(carved.val if split == "val" else carved.train)


def predict_probabilities(
    model: Any, images: Images, batch_size: int = 64, desc: str = "predict"
) -> NDArray[np.float64]:
    """P(pneumonia) per image, one ``predict_on_batch`` call per batch (never per image)."""
    out = np.empty(len(images), dtype=np.float64)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch"):
        batch = images[start : start + batch_size]
        out[start : start + len(batch)] = np.asarray(model.predict_on_batch(batch))[:, 1]
    return out


def write_evaluation(
    samples: Sequence[Sample],
    probabilities: NDArray[np.float64],
    threshold: float,
    out_dir: Path,
    title: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``predictions.csv`` and the confusion, ROC and reliability plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = label_array(samples)
    metrics = binary_metrics(labels, probabilities, threshold)
    (out_dir / "metrics.json").write_text(json.dumps({**(extra or {}), **metrics}, indent=2))
    with (out_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", "label", "p_pneumonia", "predicted"))
        for sample, p in zip(samples, probabilities, strict=True):
            writer.writerow((sample.path, sample.label, f"{p:.6f}", int(p >= threshold)))
    plot_confusion(Confusion(**metrics["confusion"]), out_dir / "confusion.png", title)
    plot_roc(labels, probabilities, threshold, out_dir / "roc.png", title)
    plot_reliability(labels, probabilities, metrics["ece"], out_dir / "reliability.png", title)
    return metrics


def evaluate(
    model_path: Path,
    data_dir: Path,
    split: str,
    out_dir: Path,
    cache_dir: Path | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Evaluate the model at ``model_path`` on ``split`` and write the results to ``out_dir``."""
    bundle = locate(model_path)
    model = keras.saving.load_model(bundle.model_file)
    size = int(model.input_shape[1])
    samples = split_samples(bundle, data_dir, split)
    images = load_images(data_dir, samples, size, cache_dir)
    probabilities = predict_probabilities(model, images, desc=f"evaluate {split}")
    used = bundle.threshold if threshold is None else threshold
    title = f"{bundle.card['name'] if bundle.card else model.name} on {split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    if bundle.histories:
        plot_history(bundle.histories, out_dir)
    extra = {"model": str(bundle.model_file), "data": str(data_dir), "split": split}
    metrics = write_evaluation(samples, probabilities, used, out_dir, title, extra)
    log.info(
        "%s on %s: accuracy %.4f recall %.4f auc %.4f",
        bundle.model_file,
        split,
        metrics["accuracy"],
        metrics["recall"],
        metrics["auc"],
    )
    return metrics
