"""The CNNs: Kaushik et al.'s models 1-4, our ``cxrnet``, and the ensemble wrapper.

Every model maps (N, size, size, 1) float32 in [0, 1] to a (N, 2) softmax, index 1 PNEUMONIA,
and uses only built-in Keras layers, so the worker loads it with plain
``keras.saving.load_model`` and no custom objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.config import TrainConfig
from training.split import CLASSES


def paper_model(cfg: TrainConfig) -> Any:
    """3x3 ReLU convolutions each followed by 2x2 max pooling; flatten; dense ReLU; softmax.

    Valid padding, as Keras's ``Conv2D`` default that the paper's code would have used. Dropout
    (model 3 on) sits between the dense layer and the softmax.
    """
    import keras

    inputs = keras.Input((cfg.input_size, cfg.input_size, 1), name="image")
    x = inputs
    for i, filters in enumerate(cfg.conv_filters, start=1):
        x = keras.layers.Conv2D(filters, 3, activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    if cfg.dropout:
        x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name=cfg.model)


def cxrnet(cfg: TrainConfig) -> Any:
    """Blocks of (3x3 conv, batch norm, ReLU) x ``convs_per_block`` then 2x2 max pooling,
    global average pooling, dropout, softmax.

    Global pooling instead of a flattened dense layer keeps the parameters few (the exported
    model stays a few MB) and lets Grad-CAM read the last block directly.
    """
    import keras

    inputs = keras.Input((cfg.input_size, cfg.input_size, 1), name="image")
    x = inputs
    for i, filters in enumerate(cfg.conv_filters, start=1):
        for j in range(1, cfg.convs_per_block + 1):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=f"block{i}_conv{j}"
            )(x)
            x = keras.layers.BatchNormalization(name=f"block{i}_bn{j}")(x)
            x = keras.layers.ReLU(name=f"block{i}_relu{j}")(x)
        if i < len(cfg.conv_filters):
            x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if cfg.dense_units:
        x = keras.layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    if cfg.dropout:
        x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name=cfg.model)


def build_model(cfg: TrainConfig) -> Any:
    return paper_model(cfg) if cfg.architecture == "paper" else cxrnet(cfg)


def ensemble(members: Sequence[Any], name: str = "cxr_pneumonia") -> Any:
    """One graph that averages the members' softmax outputs (the worker makes one call).

    A single member is returned unchanged. Members must share the input size.
    """
    import keras

    if len(members) == 1:
        return members[0]
    sizes = {tuple(member.input_shape[1:]) for member in members}
    if len(sizes) != 1:
        raise ValueError(f"ensemble members disagree on the input shape: {sorted(sizes)}")
    inputs = keras.Input(sizes.pop(), name="image")
    outputs = [
        keras.Model(member.input, member.output, name=f"member{i}")(inputs)
        for i, member in enumerate(members)
    ]
    return keras.Model(inputs, keras.layers.Average(name="mean")(outputs), name=name)
