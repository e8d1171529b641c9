"""One training run: split, data, model, fit, best-epoch checkpoint, validation evaluation.

The run directory receives ``config.json`` (the resolved configuration and how it was run),
``split.csv`` (the manifest), ``best.keras`` (the epoch with the lowest validation loss),
``history.json``, ``accuracy.png``/``loss.png`` and ``validation/`` (metrics at the operating
threshold, chosen on this split only, with plots).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from training.config import TrainConfig
from training.data import (
    balanced_class_weights,
    evaluation_dataset,
    label_array,
    load_images,
    training_dataset,
)
from training.evaluate import (
    HISTORY_NAME,
    MANIFEST_NAME,
    RUN_CHECKPOINT,
    VALIDATION_DIR,
    predict_probabilities,
    write_evaluation,
)
from training.metrics import threshold_for_recall
from training.models import build_model
from training.plots import plot_history
from training.split import list_samples, patient_split, write_manifest

log = logging.getLogger(__name__)


def set_seeds(seed: int) -> None:
    """Python, NumPy and TensorFlow seeds, and deterministic TensorFlow kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class TqdmProgress(keras.callbacks.Callback):  # type: ignore[misc]
    """One progress bar per epoch, ending with the epoch's training and validation figures."""

    def __init__(self) -> None:
        super().__init__()
        self._bar: tqdm[Any] | None = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._bar = tqdm(
            total=self.params["steps"],
            desc=f"epoch {epoch + 1}/{self.params['epochs']}",
            unit="batch",
        )

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k: f"{float(v):.4f}" for k, v in (logs or {}).items()})

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: f"{float(v):.4f}" for k, v in (logs or {}).items()})
            self._bar.close()


def compile_model(model: Any, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Adam (AdamW with weight decay), categorical cross-entropy over the two-way softmax."""
    learning_rate: Any = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=cfg.epochs * steps_per_epoch, alpha=0.01
        )
    optimizer = (
        keras.optimizers.AdamW(learning_rate, weight_decay=cfg.weight_decay)
        if cfg.weight_decay
        else keras.optimizers.Adam(learning_rate)
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )


def operating_threshold(cfg: TrainConfig, labels: Any, probabilities: Any) -> float:
    """0.5 (the argmax, as the paper) or the highest threshold keeping validation recall."""
    if cfg.threshold_policy == "recall":
        return threshold_for_recall(labels, probabilities, cfg.target_recall)
    return 0.5


def train(
    cfg: TrainConfig,
    data_dir: Path,
    run_dir: Path,
    cache_dir: Path | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Train ``cfg`` on the training part of ``data_dir`` and return the validation metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seeds(cfg.seed)
    split = patient_split(list_samples(data_dir, "train"), cfg.val_fraction, cfg.split_seed)
    manifest_sha = write_manifest(split, run_dir / MANIFEST_NAME)
    x_train = load_images(data_dir, split.train, cfg.input_size, cache_dir)
    x_val = load_images(data_dir, split.val, cfg.input_size, cache_dir)
    y_train, y_val = label_array(split.train), label_array(split.val)
    run_info = {
        "command": command,
        "data": str(data_dir),
        "training_manifest_sha256": manifest_sha,
        "counts": {
            "train": np.bincount(y_train, minlength=2).tolist(),
            "val": np.bincount(y_val, minlength=2).tolist(),
            "train_patients": len({s.patient for s in split.train}),
            "val_patients": len({s.patient for s in split.val}),
        },
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    (run_dir / "config.json").write_text(
        json.dumps({"config": cfg.to_dict(), "run": run_info}, indent=2)
    )

    weights = balanced_class_weights(y_train) if cfg.class_weighting else None
    train_data = training_dataset(x_train, y_train, cfg.batch_size, cfg.augment, cfg.seed, weights)
    val_data = evaluation_dataset(x_val, y_val, 64)
    steps = int(np.ceil(len(y_train) / cfg.batch_size))
    model = build_model(cfg)
    compile_model(model, cfg, steps)
    log.info(
        "training %s (%d parameters) on %d images, validating on %d",
        cfg.model,
        model.count_params(),
        len(y_train),
        len(y_val),
    )
    started = time.monotonic()
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=cfg.epochs,
        shuffle=False,  # training_dataset shuffles, seeded
        verbose=0,
        callbacks=[
            TqdmProgress(),
            keras.callbacks.ModelCheckpoint(
                run_dir / RUN_CHECKPOINT, monitor="val_loss", save_best_only=True
            ),
        ],
    ).history
    seconds = time.monotonic() - started
    histories = {cfg.model: {k: [float(v) for v in values] for k, values in history.items()}}
    (run_dir / HISTORY_NAME).write_text(json.dumps(histories, indent=2))
    plot_history(histories, run_dir)

    best = keras.saving.load_model(run_dir / RUN_CHECKPOINT)
    probabilities = predict_probabilities(best, x_val, desc="validate")
    threshold = operating_threshold(cfg, y_val, probabilities)
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    timing = {
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / cfg.epochs, 2),
        "train_images_per_second": round(len(y_train) * cfg.epochs / seconds, 1),
    }
    metrics = write_evaluation(
        split.val,
        probabilities,
        threshold,
        run_dir / VALIDATION_DIR,
        f"{cfg.model} on validation",
        {"model": cfg.model, "split": "val", "best_epoch": best_epoch, **timing},
    )
    log.info(
        "%s: best epoch %d, validation accuracy %.4f recall %.4f auc %.4f, threshold %.4f, %.0f s",
        cfg.model,
        best_epoch,
        metrics["accuracy"],
        metrics["recall"],
        metrics["auc"],
        threshold,
        seconds,
    )
    return metrics
