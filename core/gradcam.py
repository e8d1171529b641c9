"""Grad-CAM heat maps (Selvaraju et al., ICCV 2017) for the pneumonia CNN.

The worker draws the map over the radiograph for a secondary-capture output, so this lives in
``core`` (the worker never imports ``training``). For an ensemble exported as one graph, whose
members are nested Keras models, the map is the mean of the members' maps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

PNEUMONIA = 1


def _feature_layer(model: Any) -> str | None:
    """The last convolution's rectified output: the last Conv2D and the same-shaped layers
    (batch norm, ReLU) right after it. ``None`` when the model has no Conv2D of its own."""
    import keras

    layers = model.layers
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        return None
    index = convs[-1]
    shape = layers[index].output.shape
    while index + 1 < len(layers) and layers[index + 1].output.shape == shape:
        index += 1
    return str(layers[index].name)


def _cam_targets(model: Any) -> list[tuple[Any, str]]:
    layer = _feature_layer(model)
    if layer is not None:
        return [(model, layer)]
    import keras

    targets = [
        (nested, name)
        for nested in model.layers
        if isinstance(nested, keras.Model) and (name := _feature_layer(nested)) is not None
    ]
    if not targets:
        raise ValueError(f"model {model.name} has no convolution to compute Grad-CAM on")
    return targets


def gradcam(
    model: Any, image: NDArray[np.float32], class_index: int = PNEUMONIA
) -> NDArray[np.float32]:
    """Heat map of the evidence for ``class_index`` in one model-input image.

    ``image`` is (size, size, 1) as ``core.preprocess.to_model_input`` returns it; the result is
    (size, size) float32 in [0, 1] (all zeros when no region raises the class score).
    """
    import keras
    import tensorflow as tf

    batch = tf.convert_to_tensor(image[np.newaxis], dtype=tf.float32)
    size = tuple(image.shape[:2])
    total = tf.zeros(size, dtype=tf.float32)
    for target, layer in _cam_targets(model):
        probe = keras.Model(target.inputs, [target.get_layer(layer).output, target.output])
        with tf.GradientTape() as tape:
            features, probabilities = probe(batch, training=False)
            score = probabilities[:, class_index]
        gradients = tape.gradient(score, features)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[0]
        total += tf.image.resize(cam[..., tf.newaxis], size, method="bilinear")[..., 0]
    heat: NDArray[np.float32] = np.maximum(total.numpy(), 0.0).astype(np.float32)
    peak = float(heat.max())
    return heat / peak if peak > 0 else heat
