"""Batch augmentation as TensorFlow ops, drawn from stateless seeds so a run is repeatable.

One affine warp per image (rotation, shear, per-axis zoom, translation, optional horizontal flip)
through ``ImageProjectiveTransformV3``, then optional gamma, contrast and brightness jitter. The
images are already model inputs (``core.preprocess.to_model_input``), so augmentation never
resizes; the warp resamples on the same grid.
"""

from __future__ import annotations

import math
from typing import Any

from training.config import AugmentConfig


def _uniform(seed: Any, n: Any, bound: float) -> Any:
    import tensorflow as tf

    return tf.random.stateless_uniform([n], seed=seed, minval=-bound, maxval=bound)


def affine_transforms(cfg: AugmentConfig, n: Any, side: int, seed: Any) -> Any:
    """(n, 8) projective transforms mapping output to input pixel coordinates, one per image."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=6)
    angle = _uniform(seeds[0], n, math.radians(cfg.rotation))
    shear = _uniform(seeds[1], n, math.radians(cfg.shear))
    zoom_x = 1.0 + _uniform(seeds[2], n, cfg.zoom)
    zoom_y = 1.0 + _uniform(seeds[3], n, cfg.zoom)
    shift = tf.reshape(_uniform(seeds[4], 2 * n, cfg.translate * side), (2, n))
    flip = tf.ones([n])
    if cfg.horizontal_flip:
        coin = tf.random.stateless_uniform([n], seed=seeds[5])
        flip = tf.where(coin < 0.5, -1.0, 1.0)
    # A = rotation @ shear @ diag(zoom_x * flip, zoom_y), applied about the image centre.
    cos, sin = tf.cos(angle), tf.sin(angle)
    shear_x, shear_y = -tf.sin(shear), tf.cos(shear)
    a00 = cos * zoom_x * flip
    a01 = (cos * shear_x - sin * shear_y) * zoom_y
    a10 = sin * zoom_x * flip
    a11 = (sin * shear_x + cos * shear_y) * zoom_y
    centre = (side - 1) / 2.0
    a02 = centre - a00 * centre - a01 * centre + shift[0]
    a12 = centre - a10 * centre - a11 * centre + shift[1]
    zeros = tf.zeros([n])
    return tf.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)


def augment_batch(images: Any, seed: Any, cfg: AugmentConfig) -> Any:
    """Augment a (n, side, side, 1) float batch in [0, 1]; ``seed`` is a shape-(2,) int tensor."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    side = int(images.shape[1])
    affine_seed, gamma_seed, contrast_seed, brightness_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    if cfg.rotation or cfg.shear or cfg.zoom or cfg.translate or cfg.horizontal_flip:
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=affine_transforms(cfg, n, side, affine_seed),
            output_shape=tf.shape(images)[1:3],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode=cfg.fill_mode,
        )
    if cfg.gamma:
        gamma = tf.exp(_uniform(gamma_seed, n, cfg.gamma))
        images = tf.pow(tf.maximum(images, 0.0), gamma[:, None, None, None])
    if cfg.contrast:
        factor = 1.0 + _uniform(contrast_seed, n, cfg.contrast)
        mean = tf.reduce_mean(images, axis=(1, 2, 3), keepdims=True)
        images = (images - mean) * factor[:, None, None, None] + mean
    if cfg.brightness:
        images = images + _uniform(brightness_seed, n, cfg.brightness)[:, None, None, None]
    return tf.clip_by_value(images, 0.0, 1.0)
