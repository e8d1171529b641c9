"""Grad-CAM on models whose evidence is known: a bright-region detector."""

from __future__ import annotations

import numpy as np
import pytest

from core.gradcam import gradcam
from training.config import PRESETS, resolve
from training.models import build_model, ensemble

SIDE = 32


def _brightness_detector(name: str = "detector") -> object:
    """P(pneumonia) rises with the mean brightness: the evidence is wherever the image is bright."""
    import keras

    inputs = keras.Input((SIDE, SIDE, 1))
    features = keras.layers.Conv2D(
        4, 3, padding="same", activation="relu", kernel_initializer="ones", name="conv"
    )(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(2, activation="softmax", name="softmax")(pooled)
    model = keras.Model(inputs, outputs, name=name)
    model.get_layer("softmax").set_weights([np.array([[-1.0, 1.0]] * 4), np.zeros(2)])
    return model


def _bright_corner() -> np.ndarray:
    image = np.zeros((SIDE, SIDE, 1), dtype=np.float32)
    image[2:10, 3:11] = 1.0
    return image


def test_heat_map_marks_the_evidence() -> None:
    heat = gradcam(_brightness_detector(), _bright_corner())
    assert heat.shape == (SIDE, SIDE)
    assert heat.dtype == np.float32
    assert heat.min() >= 0.0
    assert heat.max() == pytest.approx(1.0)
    assert heat[2:10, 3:11].mean() > 0.8
    assert heat[SIDE // 2 :, SIDE // 2 :].max() < 0.05


def test_heat_map_of_the_opposite_class_is_empty() -> None:
    heat = gradcam(_brightness_detector(), _bright_corner(), class_index=0)
    assert heat.shape == (SIDE, SIDE)
    assert float(heat.max()) == 0.0


def test_ensemble_heat_map_is_the_members_mean() -> None:
    single = gradcam(_brightness_detector("a"), _bright_corner())
    pair = ensemble([_brightness_detector("a"), _brightness_detector("b")])
    np.testing.assert_allclose(gradcam(pair, _bright_corner()), single, atol=1e-5)


@pytest.mark.parametrize("name", ["paper3", "cxrnet"])
def test_heat_map_of_the_shipped_architectures(name: str) -> None:
    cfg = resolve(name, {"input_size": 64}) if name == "cxrnet" else PRESETS[name]
    model = build_model(cfg)
    image = np.random.default_rng(0).uniform(size=(64, 64, 1)).astype(np.float32)
    heat = gradcam(model, image)
    assert heat.shape == (64, 64)
    assert heat.min() >= 0.0
    assert heat.max() <= 1.0
