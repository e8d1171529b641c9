"""The dataset listing and the seeded, patient-level validation split carved from train.

The Kermany file names carry the patient: ``person1234_bacteria_5678.jpeg`` (pneumonia),
``IM-0117-0001.jpeg`` and ``NORMAL2-IM-1234-0001.jpeg`` (normal). Several images of one patient
must land on the same side of the split, or the validation figures leak.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLASSES = ("NORMAL", "PNEUMONIA")
"""Class names in output order: index 1 is PNEUMONIA."""

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),
    re.compile(r"^(NORMAL\d*-IM-\d+)-"),
    re.compile(r"^(IM-\d+)-"),
)


@dataclass(frozen=True)
class Sample:
    """One image: its path relative to the dataset root, label index and patient key."""

    path: str
    label: int
    patient: str


@dataclass(frozen=True)
class Split:
    """The training and validation samples, both sorted by path."""

    train: tuple[Sample, ...]
    val: tuple[Sample, ...]


def patient_id(file_name: str) -> str:
    """The patient key a Kermany file name carries; ``ValueError`` for an unknown pattern."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(file_name)
        if match:
            return match.group(1)
    raise ValueError(f"no patient in file name {file_name!r} (expected the Kermany naming)")


def list_samples(data_dir: Path, split: str) -> list[Sample]:
    """Every image of ``DIR/<split>/{NORMAL,PNEUMONIA}``, sorted by path."""
    root = data_dir / split
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory (expected the Kaggle layout)")
    samples = [
        Sample(f"{split}/{name}/{path.name}", label, patient_id(path.name))
        for label, name in enumerate(CLASSES)
        for path in (root / name).iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not samples:
        raise FileNotFoundError(f"no images under {root}/{{{','.join(CLASSES)}}}")
    return sorted(samples, key=lambda s: s.path)


def patient_split(samples: Iterable[Sample], val_fraction: float, seed: int) -> Split:
    """Move whole patients into validation until it holds ``val_fraction`` of each class.

    Patients are shuffled per class with ``random.Random(seed)`` from a sorted order, so the split
    depends on the seed and the file names only.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction {val_fraction} is not in (0, 1)")
    rng = random.Random(seed)
    by_label: dict[int, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for sample in samples:
        by_label[sample.label][sample.patient].append(sample)
    val_patients: set[tuple[int, str]] = set()
    for label in sorted(by_label):
        patients = by_label[label]
        order = sorted(patients)
        rng.shuffle(order)
        wanted = val_fraction * sum(len(images) for images in patients.values())
        taken = 0
        for patient in order:
            if taken >= wanted:
                break
            val_patients.add((label, patient))
            taken += len(patients[patient])
    train: list[Sample] = []
    val: list[Sample] = []
    for label, patients in by_label.items():
        for patient, images in patients.items():
            (val if (label, patient) in val_patients else train).extend(images)
    return Split(
        tuple(sorted(train, key=lambda s: s.path)), tuple(sorted(val, key=lambda s: s.path))
    )


MANIFEST_FIELDS = ("path", "label", "class", "patient", "subset")


def manifest_csv(split: Split) -> str:
    """The split as CSV text, one row per image sorted by path: the same split, the same bytes."""
    rows = sorted(
        [(s, "train") for s in split.train] + [(s, "val") for s in split.val],
        key=lambda row: row[0].path,
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    for sample, subset in rows:
        writer.writerow((sample.path, sample.label, CLASSES[sample.label], sample.patient, subset))
    return buffer.getvalue()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_sha256(split: Split) -> str:
    return sha256_text(manifest_csv(split))


def write_manifest(split: Split, path: Path) -> str:
    """Write the split's manifest and return its sha256 (the model card cites it)."""
    text = manifest_csv(split)
    path.write_text(text)
    return sha256_text(text)


def read_manifest(path: Path) -> Split:
    """The split a manifest written by ``write_manifest`` holds."""
    train: list[Sample] = []
    val: list[Sample] = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            sample = Sample(row["path"], int(row["label"]), row["patient"])
            (val if row["subset"] == "val" else train).append(sample)
    return Split(tuple(train), tuple(val))
