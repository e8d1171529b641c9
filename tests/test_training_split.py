"""The dataset listing, the patient-level validation split and its manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.split import (
    Sample,
    list_samples,
    manifest_sha256,
    patient_id,
    patient_split,
    read_manifest,
    write_manifest,
)


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1234_bacteria_5678.jpeg", "person1234"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0117-0001.jpeg", "IM-0117"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("NORMAL2-IM-1234-0001.jpeg", "NORMAL2-IM-1234"),
        ("NORMAL2-IM-0941-0001-0002.jpeg", "NORMAL2-IM-0941"),
    ],
)
def test_patient_id_reads_the_kermany_names(name: str, patient: str) -> None:
    assert patient_id(name) == patient


def test_patient_id_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="no patient"):
        patient_id("scan_0001.jpeg")


def _synthetic_samples() -> list[Sample]:
    """Patients with 1 to 4 images each, in both classes."""
    samples = []
    for p in range(60):
        for k in range(1 + p % 4):
            samples.append(Sample(f"train/NORMAL/IM-{p:04d}-{k:04d}.jpeg", 0, f"IM-{p:04d}"))
            samples.append(Sample(f"train/PNEUMONIA/person{p}_virus_{k}.jpeg", 1, f"person{p}"))
    return samples


def test_split_keeps_every_patient_on_one_side_and_every_image_somewhere() -> None:
    samples = _synthetic_samples()
    split = patient_split(samples, 0.2, seed=3)
    train_patients = {s.patient for s in split.train}
    val_patients = {s.patient for s in split.val}
    assert not train_patients & val_patients
    assert sorted(split.train + split.val, key=lambda s: s.path) == sorted(
        samples, key=lambda s: s.path
    )
    for label in (0, 1):
        in_class = sum(s.label == label for s in samples)
        in_val = sum(s.label == label for s in split.val)
        # whole patients of at most 4 images are moved until the class reaches 20%
        assert 0.2 * in_class <= in_val < 0.2 * in_class + 4


def test_split_is_seeded() -> None:
    samples = _synthetic_samples()
    assert patient_split(samples, 0.2, seed=3) == patient_split(list(reversed(samples)), 0.2, 3)
    assert patient_split(samples, 0.2, seed=3) != patient_split(samples, 0.2, seed=4)


def test_split_rejects_a_fraction_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        patient_split(_synthetic_samples(), 1.0, seed=0)


def test_manifest_round_trip_and_checksum(tmp_path: Path) -> None:
    split = patient_split(_synthetic_samples(), 0.25, seed=7)
    sha = write_manifest(split, tmp_path / "split.csv")
    assert sha == manifest_sha256(split)
    assert read_manifest(tmp_path / "split.csv") == split
    header = (tmp_path / "split.csv").read_text().splitlines()[0]
    assert header == "path,label,class,patient,subset"


def test_real_train_split_has_no_patient_on_both_sides(chest_xray_dir: Path) -> None:
    samples = list_samples(chest_xray_dir, "train")
    assert len(samples) == 5216
    assert sum(s.label for s in samples) == 3875
    split = patient_split(samples, 0.15, seed=42)
    assert not {s.patient for s in split.train} & {s.patient for s in split.val}
    assert len(split.train) + len(split.val) == 5216
    again = patient_split(list_samples(chest_xray_dir, "train"), 0.15, seed=42)
    assert manifest_sha256(again) == manifest_sha256(split)


def test_real_test_split_is_the_official_one(chest_xray_dir: Path) -> None:
    samples = list_samples(chest_xray_dir, "test")
    assert len(samples) == 624
    assert sum(s.label for s in samples) == 390
