"""Training and inference speed on this machine's CPU.

Training: each model's real pipeline (augmentation as TF ops, class weights where configured)
and optimiser, on random images of the model's input size, timed over one epoch of ``--steps``
batches after a warm-up epoch; seconds per epoch are scaled to the 4430 training images of the
default patient split. Inference: the committed model through ``predict_on_batch`` and a
``tf.function``, at batch 1 and batch 32 (never ``model.predict`` per image).

    .venv/bin/python bench/bench_training.py [--models paper1,cxrnet] [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

TRAIN_IMAGES = 4430  # training part of the default split (seed 42, 15% of patients held out)


def bench_training(name: str, steps: int) -> tuple[float, float, int]:
    """(images/s, seconds per epoch of the real split, parameters) for one preset."""
    from training.config import PRESETS
    from training.data import balanced_class_weights, training_dataset
    from training.models import build_model
    from training.train import compile_model, set_seeds

    cfg = PRESETS[name]
    set_seeds(cfg.seed)
    n = steps * cfg.batch_size
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(n, cfg.input_size, cfg.input_size, 1)).astype(np.float32)
    labels = (rng.uniform(size=n) < 0.74).astype(np.int64)
    weights = balanced_class_weights(labels) if cfg.class_weighting else None
    data = training_dataset(images, labels, cfg.batch_size, cfg.augment, cfg.seed, weights)
    model = build_model(cfg)
    compile_model(model, cfg, steps)
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    started = time.perf_counter()
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    rate = n / (time.perf_counter() - started)
    return rate, TRAIN_IMAGES / rate, int(model.count_params())


def bench_inference(model_path: Path, repeats: int) -> dict[str, float]:
    """Images/s of the committed model at batch 1 and 32, two ways of calling it."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path)
    size = int(model.input_shape[1])
    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    results = {}
    for batch in (1, 32):
        x = np.random.default_rng(0).uniform(size=(batch, size, size, 1)).astype(np.float32)
        for label, call in (("predict_on_batch", model.predict_on_batch), ("tf.function", infer)):
            call(x)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                np.asarray(call(x))
                times.append(time.perf_counter() - started)
            results[f"{label} batch {batch}"] = batch / statistics.median(times)
    return results


def main() -> None:
    from core.settings import Settings
    from training.config import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(PRESETS), help="comma-separated presets")
    parser.add_argument("--steps", type=int, default=40, help="batches in the timed epoch")
    parser.add_argument("--model-path", type=Path, default=Settings().model_path)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__} on {os.cpu_count()} CPUs")
    header = ("model", "input", "params", "train img/s", "s/epoch", "epochs", "full run")
    print("{:8} {:>5} {:>10} {:>12} {:>8} {:>6} {:>10}".format(*header))
    for name in args.models.split(","):
        rate, per_epoch, params = bench_training(name, args.steps)
        cfg = PRESETS[name]
        print(
            f"{name:8} {cfg.input_size:>5} {params:>10,} {rate:>12.0f} {per_epoch:>8.1f} "
            f"{cfg.epochs:>6} {per_epoch * cfg.epochs / 60:>8.1f} m"
        )
    if args.model_path.is_file():
        print(f"inference, {args.model_path}:")
        for label, rate in bench_inference(args.model_path, args.repeats).items():
            print(f"  {label:26} {rate:>8.0f} images/s")


if __name__ == "__main__":
    main()
