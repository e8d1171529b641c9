"""Typed training configurations: the paper's four models and ours.

A run saves its resolved configuration as ``config.json``; ``--set key=value`` on the command line
overrides any field (dotted keys reach the augmentation), so every experiment is reproducible from
its run directory.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class AugmentConfig:
    """Random affine and intensity augmentation, applied per image as TensorFlow ops.

    Angles are in degrees; ``zoom`` and ``translate`` are fractions of the image side; ``zoom``
    draws an independent scale per axis from [1 - zoom, 1 + zoom], as Keras's ImageDataGenerator.
    """

    rotation: float = 0.0
    shear: float = 0.0
    zoom: float = 0.0
    translate: float = 0.0
    horizontal_flip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    fill_mode: Literal["NEAREST", "REFLECT", "CONSTANT"] = "NEAREST"

    @property
    def enabled(self) -> bool:
        return any(
            (
                self.rotation,
                self.shear,
                self.zoom,
                self.translate,
                self.horizontal_flip,
                self.brightness,
                self.contrast,
                self.gamma,
            )
        )


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run besides the data.

    ``split_seed`` draws the validation patients; ``seed`` the initial weights, batch order and
    augmentation. Ensemble members share the split and differ in ``seed``.
    """

    model: str
    architecture: Literal["paper", "cxrnet"]
    input_size: int = 64
    conv_filters: tuple[int, ...] = (32,)
    convs_per_block: int = 1
    dense_units: int = 128
    dropout: float = 0.0
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    class_weighting: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_fraction: float = 0.15
    split_seed: int = 42
    seed: int = 42
    threshold_policy: Literal["argmax", "recall"] = "argmax"
    target_recall: float = 0.98

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        values = dict(data)
        values["augment"] = AugmentConfig(**values.get("augment", {}))
        values["conv_filters"] = tuple(values.get("conv_filters", (32,)))
        return cls(**values)


PAPER_AUGMENT = AugmentConfig(shear=0.2, zoom=0.2, horizontal_flip=True, fill_mode="NEAREST")
"""Keras's ImageDataGenerator recipe of the time (shear_range=0.2, zoom_range=0.2,
horizontal_flip=True). Its ``shear_range`` is in degrees, so the shear is tiny; we keep it."""


def _paper(number: int) -> TrainConfig:
    """Kaushik et al.'s model ``number``: ``number`` conv/pool blocks, one dense layer."""
    late = number >= 3
    return TrainConfig(
        model=f"paper{number}",
        architecture="paper",
        input_size=64,
        conv_filters=(32, 64, 128, 256)[:number],
        dense_units=128 if number == 1 else 256,
        dropout=0.3 if late else 0.0,
        learning_rate=1e-4 if late else 1e-3,
        augment=PAPER_AUGMENT,
    )


OURS = "cxrnet"

PRESETS: dict[str, TrainConfig] = {
    **{f"paper{n}": _paper(n) for n in range(1, 5)},
    OURS: TrainConfig(
        model=OURS,
        architecture="cxrnet",
        input_size=128,
        conv_filters=(16, 32, 64, 128, 256),
        convs_per_block=2,
        dense_units=0,
        dropout=0.3,
        epochs=30,
        batch_size=32,
        learning_rate=2e-3,
        lr_schedule="cosine",
        weight_decay=1e-4,
        label_smoothing=0.0,
        class_weighting=True,
        augment=AugmentConfig(
            rotation=10.0,
            zoom=0.1,
            translate=0.06,
            brightness=0.1,
            contrast=0.2,
            gamma=0.2,
            fill_mode="NEAREST",
        ),
        threshold_policy="recall",
    ),
}


def resolve(model: str, overrides: dict[str, Any]) -> TrainConfig:
    """The preset ``model`` with ``overrides`` applied; dotted keys set augmentation fields."""
    if model not in PRESETS:
        raise KeyError(f"unknown model {model!r}; choose from {', '.join(PRESETS)}")
    data = PRESETS[model].to_dict()
    for key, value in overrides.items():
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        if leaf not in target:
            raise KeyError(f"unknown configuration field {key!r}")
        target[leaf] = value
    return TrainConfig.from_dict(data)
