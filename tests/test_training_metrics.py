"""Metric functions against confusion matrices and curves worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    Confusion,
    binary_metrics,
    confusion,
    expected_calibration_error,
    log_loss,
    rates,
    roc_auc,
    roc_curve,
    threshold_for_recall,
)

# Ten images: four with pneumonia. Scores sorted high to low for readability.
LABELS = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0])
SCORES = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05])


def test_confusion_counts_by_hand() -> None:
    # at 0.5: predicted positive are the first five -> tp 3 (0.95, 0.9, 0.7), fp 2 (0.8, 0.6)
    assert confusion(LABELS, SCORES >= 0.5) == Confusion(tp=3, tn=4, fp=2, fn=1)


def test_rates_by_hand() -> None:
    r = rates(Confusion(tp=3, tn=4, fp=2, fn=1))
    assert r["accuracy"] == pytest.approx(7 / 10)
    assert r["precision"] == pytest.approx(3 / 5)
    assert r["recall"] == pytest.approx(3 / 4)
    assert r["specificity"] == pytest.approx(4 / 6)
    assert r["f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))


def test_rates_of_an_empty_class_are_zero_not_an_error() -> None:
    assert rates(Confusion(tp=0, tn=5, fp=0, fn=0))["recall"] == 0.0


def test_paper_like_confusion_matrix() -> None:
    """A 624-image test split: 390 pneumonia, 234 normal; recall 98%, accuracy 92.31%."""
    c = Confusion(tp=382, fn=8, tn=194, fp=40)
    r = rates(c)
    assert c.total == 624
    assert r["accuracy"] == pytest.approx(576 / 624)
    assert round(r["accuracy"] * 100, 2) == 92.31
    assert round(r["recall"], 2) == 0.98


def test_auc_by_hand() -> None:
    # (positive, negative) pairs ranked correctly, of 4 x 6: the positives 0.95 and 0.9 beat all
    # six negatives, 0.7 beats five (not 0.8), 0.3 beats three (0.2, 0.1, 0.05): 20 of 24.
    assert roc_auc(LABELS, SCORES) == pytest.approx(20 / 24)


def test_auc_counts_ties_as_one_half() -> None:
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([0, 1, 1], [0.2, 0.2, 0.9]) == pytest.approx((0.5 + 1) / 2)


def test_roc_curve_ends() -> None:
    fpr, tpr, thresholds = roc_curve(LABELS, SCORES)
    assert (fpr[0], tpr[0], thresholds[0]) == (0.0, 0.0, np.inf)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(tpr) >= 0)


def test_log_loss_by_hand() -> None:
    expected = -(math.log(0.9) + math.log(1 - 0.2)) / 2
    assert log_loss([1, 0], [0.9, 0.2]) == pytest.approx(expected)


def test_threshold_for_recall_is_the_highest_that_keeps_it() -> None:
    # positives' scores: 0.95, 0.9, 0.7, 0.3; recall 0.75 needs three -> threshold 0.7
    assert threshold_for_recall(LABELS, SCORES, 0.75) == 0.7
    assert threshold_for_recall(LABELS, SCORES, 0.98) == 0.3
    assert threshold_for_recall(LABELS, SCORES, 0.5) == 0.9
    t = threshold_for_recall(LABELS, SCORES, 0.75)
    assert rates(confusion(LABELS, t <= SCORES))["recall"] >= 0.75


def test_ece_by_hand() -> None:
    # two bins used: confidence 0.9 (two images, one right) and 0.6 (two images, both right)
    labels = [1, 0, 1, 0]
    scores = [0.9, 0.9, 0.6, 0.4]
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert expected_calibration_error(labels, scores) == pytest.approx(expected)


def test_ece_of_a_calibrated_predictor_is_small() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    labels = rng.uniform(size=p.size) < p
    assert expected_calibration_error(labels, p) < 0.01


def test_binary_metrics_reports_everything_metrics_json_needs() -> None:
    m = binary_metrics(LABELS, SCORES, 0.5)
    for key in ("accuracy", "loss", "precision", "recall", "specificity", "f1", "auc", "ece"):
        assert isinstance(m[key], float)
    assert m["threshold"] == 0.5
    assert m["confusion"] == {"tp": 3, "tn": 4, "fp": 2, "fn": 1}
    assert m["n"] == 10
