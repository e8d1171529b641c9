"""Dataset images through the serving preprocessing, the cache, augmentation and tf.data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.preprocess import display_from_8bit, to_model_input
from training.augment import augment_batch
from training.config import PAPER_AUGMENT, PRESETS, AugmentConfig
from training.data import (
    balanced_class_weights,
    load_images,
    preprocess_file,
    training_dataset,
)
from training.split import list_samples


def _gradient_image(path: Path, side: int = 300) -> np.ndarray:
    """A left-to-right ramp saved as an RGB JPEG: asymmetric, so a flip shows."""
    ramp = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))
    rgb = np.stack([ramp] * 3, axis=-1)
    Image.fromarray(rgb).save(path, quality=95)
    return rgb


def test_preprocess_file_is_the_serving_function(tmp_path: Path) -> None:
    path = tmp_path / "IM-0001-0001.jpeg"
    _gradient_image(path)
    expected = to_model_input(display_from_8bit(np.asarray(Image.open(path).convert("RGB"))), 48)
    got = preprocess_file(path, 48)
    assert got.shape == (48, 48, 1)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_real_images_load_as_model_inputs_and_cache(chest_xray_dir: Path, tmp_path: Path) -> None:
    samples = list_samples(chest_xray_dir, "test")[:6]
    images = load_images(chest_xray_dir, samples, 64, tmp_path)
    assert images.shape == (6, 64, 64, 1)
    assert images.dtype == np.float32
    assert images.min() >= 0.0
    assert images.max() <= 1.0
    assert images.std() > 0.05  # radiographs, not blank arrays
    np.testing.assert_array_equal(images[2], preprocess_file(chest_xray_dir / samples[2].path, 64))
    cached = list(tmp_path.glob("images-64-*.npy"))
    assert len(cached) == 1
    np.testing.assert_array_equal(load_images(chest_xray_dir, samples, 64, tmp_path), images)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    load_images(chest_xray_dir, samples[:3], 64, tmp_path)  # another subset: another file
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_balanced_class_weights() -> None:
    weights = balanced_class_weights(np.array([0, 1, 1, 1]))
    np.testing.assert_allclose(weights, [2.0, 2.0 / 3.0])
    with pytest.raises(ValueError, match="no samples"):
        balanced_class_weights(np.array([1, 1]))


def _ramps(n: int = 4, side: int = 32) -> np.ndarray:
    ramp = np.tile(np.linspace(0.0, 1.0, side, dtype=np.float32), (side, 1))
    return np.repeat(ramp[np.newaxis, ..., np.newaxis], n, axis=0)


def test_augmentation_without_settings_is_the_identity() -> None:
    import tensorflow as tf

    images = _ramps()
    out = augment_batch(tf.constant(images), tf.constant([1, 2]), AugmentConfig())
    np.testing.assert_allclose(out.numpy(), images, atol=1e-6)


def test_paper_augmentation_flips_some_images_and_stays_in_range() -> None:
    import tensorflow as tf

    images = _ramps(32)
    out = augment_batch(tf.constant(images), tf.constant([5, 6]), PAPER_AUGMENT).numpy()
    assert out.shape == images.shape
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    # a ramp that rises to the right falls to the right once flipped
    slopes = out[:, 16, 24, 0] - out[:, 16, 8, 0]
    assert (slopes < 0).any()
    assert (slopes > 0).any()


def test_improved_augmentation_never_flips() -> None:
    import tensorflow as tf

    assert not PRESETS["cxrnet"].augment.horizontal_flip
    images = _ramps(64)
    out = augment_batch(tf.constant(images), tf.constant([5, 6]), PRESETS["cxrnet"].augment)
    slopes = out.numpy()[:, 16, 24, 0] - out.numpy()[:, 16, 8, 0]
    assert (slopes > 0).all()
    assert not np.allclose(out.numpy(), images, atol=1e-3)


def test_training_dataset_is_repeatable_and_weighted() -> None:
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(20, 16, 16, 1)).astype(np.float32)
    labels = np.array([0] * 5 + [1] * 15)
    weights = balanced_class_weights(labels)

    def first_epoch(seed: int) -> list[tuple[np.ndarray, ...]]:
        data = training_dataset(images, labels, 8, PRESETS["cxrnet"].augment, seed, weights)
        return [tuple(t.numpy() for t in batch) for batch in data]

    a, b, c = first_epoch(1), first_epoch(1), first_epoch(2)
    assert [x.shape for x in a[0]] == [(8, 16, 16, 1), (8, 2), (8,)]
    assert sum(len(batch[0]) for batch in a) == 20
    for batch_a, batch_b in zip(a, b, strict=True):
        for x, y in zip(batch_a, batch_b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0][0], c[0][0])
    for _, onehot, w in a:
        np.testing.assert_allclose(w, weights[onehot.argmax(axis=1)])
