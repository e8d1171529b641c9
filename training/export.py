"""Export: one or more training runs become the model the worker loads, with its model card.

The members' best checkpoints are averaged in one Keras graph (``training.models.ensemble``).
The operating threshold is chosen on the validation split the runs share; the test split is only
evaluated, for the card. The export is reloaded and checked to give the same outputs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pydicom.uid

from training.config import TrainConfig
from training.data import label_array, load_images
from training.evaluate import (
    CARD_NAME,
    EXPORTED_MODEL,
    HISTORY_NAME,
    MANIFEST_NAME,
    RUN_CHECKPOINT,
    predict_probabilities,
)
from training.metrics import binary_metrics
from training.models import ensemble
from training.split import CLASSES, list_samples, read_manifest, sha256_text
from training.train import operating_threshold

log = logging.getLogger(__name__)

PREPROCESSING = (
    "core.preprocess.to_model_input(display, input_size): the display image in [0, 1] "
    "(0 black; display_from_dicom for DICOM, display_from_8bit for 8-bit images) stretched "
    "bicubically onto 224x224, then onto input_size x input_size; shape (input_size, input_size, 1)"
)


def _read_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    data = json.loads((run_dir / "config.json").read_text())
    return TrainConfig.from_dict(data["config"]), data["run"]


def export(
    run_dirs: Sequence[Path],
    data_dir: Path,
    out_dir: Path,
    version: str,
    command: str,
    cache_dir: Path | None = None,
    name: str = "cxr-triage-pneumonia",
    uid_root: str = pydicom.uid.PYDICOM_ROOT_UID,
) -> dict[str, Any]:
    """Write ``cxr_pneumonia.keras``, ``model_card.json`` and ``history.json`` to ``out_dir``."""
    runs = [_read_run(run_dir) for run_dir in run_dirs]
    configs = [cfg for cfg, _ in runs]
    shas = {info["training_manifest_sha256"] for _, info in runs}
    if len(shas) != 1:
        raise ValueError("the runs were trained on different splits; an ensemble needs one")
    policies = {(cfg.threshold_policy, cfg.target_recall) for cfg in configs}
    if len(policies) != 1:
        raise ValueError(f"the runs disagree on the threshold policy: {sorted(policies)}")
    manifest = run_dirs[0] / MANIFEST_NAME
    if sha256_text(manifest.read_text()) != next(iter(shas)):
        raise ValueError(f"{manifest} does not match the sha256 its run recorded")

    members = [keras.saving.load_model(run_dir / RUN_CHECKPOINT) for run_dir in run_dirs]
    model = ensemble(members)
    size = int(model.input_shape[1])
    split = read_manifest(manifest)
    test_samples = list_samples(data_dir, "test")
    x_val = load_images(data_dir, split.val, size, cache_dir)
    x_test = load_images(data_dir, test_samples, size, cache_dir)
    p_val = predict_probabilities(model, x_val, desc="validation")
    threshold = operating_threshold(configs[0], label_array(split.val), p_val)
    p_test = predict_probabilities(model, x_test, desc="test")

    out_dir.mkdir(parents=True, exist_ok=True)
    model_file = out_dir / EXPORTED_MODEL
    model.save(model_file)
    reloaded = keras.saving.load_model(model_file)
    difference = float(np.max(np.abs(reloaded.predict_on_batch(x_val[:64]) - model(x_val[:64]))))
    if difference > 1e-5:
        raise RuntimeError(f"the reloaded model differs from the trained one by {difference}")

    histories: dict[str, Any] = {}
    for run_dir in run_dirs:
        for run, history in json.loads((run_dir / HISTORY_NAME).read_text()).items():
            histories[f"{run_dir.name}/{run}" if len(run_dirs) > 1 else run] = history
    (out_dir / HISTORY_NAME).write_text(json.dumps(histories, indent=2))
    card = {
        "name": name,
        "version": version,
        "device_uid": str(pydicom.uid.generate_uid(uid_root)),
        "input_size": size,
        "preprocessing": PREPROCESSING,
        "classes": list(CLASSES),
        "threshold": threshold,
        "threshold_policy": (
            f"highest threshold keeping validation recall >= {configs[0].target_recall}"
            if configs[0].threshold_policy == "recall"
            else "0.5, the argmax of the softmax"
        ),
        "metrics": {
            "validation": binary_metrics(label_array(split.val), p_val, threshold),
            "test": binary_metrics(label_array(test_samples), p_test, threshold),
        },
        "training_manifest_sha256": next(iter(shas)),
        "split": {
            "seed": configs[0].split_seed,
            "val_fraction": configs[0].val_fraction,
            "train_images": len(split.train),
            "val_images": len(split.val),
        },
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "training_command": [info["command"] for _, info in runs] + [command],
        "architecture": {
            "members": [cfg.model for cfg in configs],
            "seeds": [cfg.seed for cfg in configs],
            "parameters": int(model.count_params()),
            "combination": "mean of the members' softmax outputs" if len(members) > 1 else None,
        },
        "epochs": [cfg.epochs for cfg in configs],
        "configs": [cfg.to_dict() for cfg in configs],
        "tensorflow": runs[0][1]["tensorflow"],
        "keras": keras.__version__,
    }
    (out_dir / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    log.info("exported %s (%d members) to %s", name, len(members), model_file)
    return card
