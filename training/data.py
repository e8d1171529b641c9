"""Dataset images as model inputs, cached, and the tf.data pipelines over them.

Every JPEG goes through ``core.preprocess`` exactly as serving does, once, into an in-memory array
(cached as ``.npy`` keyed by the file list, the input size and the preprocessing source). tf.data
then batches tensors and augments with TF ops, so an epoch costs no image decoding.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from tqdm import tqdm

import core.preprocess
from core.preprocess import display_from_8bit, to_model_input
from training.augment import augment_batch
from training.config import AugmentConfig
from training.split import CLASSES, Sample

log = logging.getLogger(__name__)

Images = NDArray[np.float32]
Labels = NDArray[np.int64]


def preprocess_file(path: Path, size: int) -> Images:
    """Model input of one dataset image: the serving preprocessing, from 8-bit display values."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    return to_model_input(display_from_8bit(pixels), size)


def _cache_key(data_dir: Path, samples: Sequence[Sample], size: int) -> str:
    digest = hashlib.sha256(inspect.getsource(core.preprocess).encode())
    digest.update(f"{size}\n".encode())
    for sample in samples:
        digest.update(f"{sample.path}:{(data_dir / sample.path).stat().st_size}\n".encode())
    return digest.hexdigest()[:20]


def load_images(
    data_dir: Path, samples: Sequence[Sample], size: int, cache_dir: Path | None = None
) -> Images:
    """(n, size, size, 1) float32 model inputs of ``samples``, in order."""
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"images-{size}-{_cache_key(data_dir, samples, size)}.npy"
        if cache.is_file():
            log.info("loading %d preprocessed images from %s", len(samples), cache)
            loaded: Images = np.load(cache)
            return loaded
    images = np.empty((len(samples), size, size, 1), dtype=np.float32)
    for i, sample in enumerate(tqdm(samples, desc=f"preprocess {size}px", unit="img")):
        images[i] = preprocess_file(data_dir / sample.path, size)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial.npy")
        np.save(partial, images)
        partial.replace(cache)
    return images


def label_array(samples: Sequence[Sample]) -> Labels:
    return np.array([sample.label for sample in samples], dtype=np.int64)


def balanced_class_weights(labels: Labels) -> NDArray[np.float32]:
    """Weight per class, ``n / (k * n_c)``: each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
    if np.any(counts == 0):
        raise ValueError(f"a class has no samples: counts {counts.tolist()}")
    return (labels.size / (len(CLASSES) * counts)).astype(np.float32)


def training_dataset(
    images: Images,
    labels: Labels,
    batch_size: int,
    augment: AugmentConfig,
    seed: int,
    class_weights: NDArray[np.float32] | None = None,
) -> Any:
    """Shuffled, augmented batches of (image, one-hot[, sample weight]); the same every rerun."""
    import tensorflow as tf

    onehot = np.eye(len(CLASSES), dtype=np.float32)[labels]
    tensors: tuple[Any, ...] = (images, onehot)
    if class_weights is not None:
        tensors += (class_weights[labels],)
    dataset = (
        tf.data.Dataset.from_tensor_slices(tensors)
        .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
    )
    if augment.enabled:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda batch, batch_seed: (augment_batch(batch[0], batch_seed, augment), *batch[1:]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(images: Images, labels: Labels, batch_size: int) -> Any:
    """Unshuffled, unaugmented batches of (image, one-hot)."""
    import tensorflow as tf

    onehot = np.eye(len(CLASSES), dtype=np.float32)[labels]
    return (
        tf.data.Dataset.from_tensor_slices((images, onehot))
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
