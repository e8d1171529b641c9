"""The pneumonia model as the worker runs it: loaded once per worker process, called per batch.

The exported ``.keras`` model and the ``model_card.json`` beside it are the contract with
training: input (N, input_size, input_size, 1) float32 in [0, 1] made by
``core.preprocess.to_model_input``, output a softmax over ``classes``, positive at ``threshold``.

TensorFlow is imported here, never in the Celery parent: a model built before the fork makes the
children hang. ``worker.tasks`` loads it lazily in each child.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

LOGGER = logging.getLogger(__name__)

CARD_NAME = "model_card.json"
POSITIVE_CLASS = "PNEUMONIA"


@dataclass(frozen=True)
class ModelCard:
    """What the worker needs from ``model_card.json``."""

    name: str
    version: str
    device_uid: str
    input_size: int
    threshold: float
    positive_index: int

    @classmethod
    def read(cls, model_path: Path) -> ModelCard:
        card = json.loads(model_path.with_name(CARD_NAME).read_text())
        return cls(
            name=str(card["name"]),
            version=str(card["version"]),
            device_uid=str(card["device_uid"]),
            input_size=int(card["input_size"]),
            threshold=float(card["threshold"]),
            positive_index=list(card["classes"]).index(POSITIVE_CLASS),
        )


def configure_tensorflow() -> None:
    """Let TensorFlow take GPU memory as it needs it rather than all of it at start."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


class PneumoniaModel:
    """A loaded model and its card; ``probabilities`` runs one batch through a ``tf.function``.

    Keras 3's ``model.predict`` costs 65-100 ms per call on a CPU whatever the batch; the traced
    function costs about 2 ms for a 64x64 image.
    """

    def __init__(self, model_path: Path) -> None:
        import keras
        import tensorflow as tf

        configure_tensorflow()
        started = time.perf_counter()
        self.card = ModelCard.read(model_path)
        self._model = keras.saving.load_model(model_path, compile=False)
        size = self.card.input_size
        self._forward: Any = tf.function(
            lambda batch: self._model(batch, training=False),
            input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)],
            reduce_retracing=True,
        )
        self._forward(np.zeros((1, size, size, 1), np.float32))  # trace once, now
        LOGGER.info(
            "loaded %s %s in %.1f s",
            self.card.name,
            self.card.version,
            time.perf_counter() - started,
        )

    @property
    def keras_model(self) -> Any:
        return self._model

    def probabilities(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """P(pneumonia) for each image of a (N, size, size, 1) batch."""
        output = np.asarray(self._forward(batch))
        return output[:, self.card.positive_index].astype(np.float32)
