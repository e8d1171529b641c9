"""Classification metrics from labels and P(pneumonia): pure NumPy, no TensorFlow.

Conventions: positive = PNEUMONIA (label 1); an image is called positive when
P(pneumonia) >= threshold, as the worker does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

Floats = NDArray[np.float64]


@dataclass(frozen=True)
class Confusion:
    tp: int
    tn: int
    fp: int
    fn: int

    @property
    def total(self) -> int:
        return self.tp + self.tn + self.fp + self.fn


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def confusion(y_true: ArrayLike, y_pred: ArrayLike) -> Confusion:
    """Counts of a binary prediction against binary labels."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    if t.shape != p.shape:
        raise ValueError(f"label shape {t.shape} differs from prediction shape {p.shape}")
    return Confusion(
        tp=int(np.sum(t & p)),
        tn=int(np.sum(~t & ~p)),
        fp=int(np.sum(~t & p)),
        fn=int(np.sum(t & ~p)),
    )


def rates(c: Confusion) -> dict[str, float]:
    """Accuracy, precision, recall (sensitivity), specificity and F1 of a confusion matrix."""
    precision = _ratio(c.tp, c.tp + c.fp)
    recall = _ratio(c.tp, c.tp + c.fn)
    return {
        "accuracy": _ratio(c.tp + c.tn, c.total),
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(c.tn, c.tn + c.fp),
        "f1": _ratio(2 * precision * recall, precision + recall),
    }


def roc_curve(y_true: ArrayLike, scores: ArrayLike) -> tuple[Floats, Floats, Floats]:
    """False and true positive rates at every distinct score, from the strictest threshold down.

    Returns (fpr, tpr, thresholds); the first point is (0, 0) at threshold +inf.
    """
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(t)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    positives, negatives = max(int(t.sum()), 1), max(int((~t).sum()), 1)
    fpr = np.r_[0.0, fps / negatives]
    tpr = np.r_[0.0, tps / positives]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (trapezoids; ties count one half, as Mann-Whitney)."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def log_loss(y_true: ArrayLike, scores: ArrayLike, eps: float = 1e-7) -> float:
    """Mean categorical cross-entropy of the two-way softmax (what Keras reports as loss)."""
    t = np.asarray(y_true).astype(bool)
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1.0 - eps)
    return float(-np.mean(np.where(t, np.log(p), np.log(1.0 - p))))


def expected_calibration_error(y_true: ArrayLike, scores: ArrayLike, bins: int = 15) -> float:
    """Top-label ECE: confidence of the argmax class against its accuracy, in equal-width bins.

    ``sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|`` (Guo et al. 2017).
    """
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(scores, dtype=np.float64)
    predicted = p >= 0.5
    confidence = np.where(predicted, p, 1.0 - p)
    correct = predicted == t
    edges = np.linspace(0.5, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def reliability(
    y_true: ArrayLike, scores: ArrayLike, bins: int = 10
) -> tuple[Floats, Floats, NDArray[np.int64]]:
    """Per equal-width bin of P(pneumonia): mean predicted probability, observed positive
    fraction and count (empty bins are NaN), for a reliability diagram."""
    t = np.asarray(y_true).astype(np.float64)
    p = np.asarray(scores, dtype=np.float64)
    index = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(index, weights=p, minlength=bins) / counts
        frac = np.bincount(index, weights=t, minlength=bins) / counts
    return mean_p, frac, counts


def threshold_for_recall(y_true: ArrayLike, scores: ArrayLike, min_recall: float) -> float:
    """The highest threshold whose recall is at least ``min_recall``.

    The highest such threshold gives the best specificity the recall constraint allows.
    """
    t = np.asarray(y_true).astype(bool)
    positives = np.sort(np.asarray(scores, dtype=np.float64)[t])[::-1]
    if positives.size == 0:
        raise ValueError("no positive samples to set a recall threshold on")
    needed = int(np.ceil(min_recall * positives.size - 1e-9))
    return float(positives[max(needed, 1) - 1])


def binary_metrics(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, Any]:
    """Everything ``metrics.json`` reports for one split at one operating threshold."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(scores, dtype=np.float64)
    c = confusion(t, p >= threshold)
    return {
        "n": c.total,
        "threshold": float(threshold),
        **rates(c),
        "loss": log_loss(t, p),
        "auc": roc_auc(t, p),
        "ece": expected_calibration_error(t, p),
        "confusion": asdict(c),
    }
