"""PNG plots of a run or an evaluation (matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from numpy.typing import ArrayLike

from training.metrics import Confusion, reliability, roc_auc, roc_curve
from training.split import CLASSES

History = Mapping[str, Sequence[float]]


def plot_history(histories: Mapping[str, History], out_dir: Path) -> list[Path]:
    """``accuracy.png`` and ``loss.png``: training and validation curves per epoch, one line
    pair per run (an ensemble has one run per member)."""
    written = []
    for metric in ("accuracy", "loss"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for run, history in histories.items():
            epochs = range(1, len(history[metric]) + 1)
            prefix = f"{run} " if len(histories) > 1 else ""
            (line,) = ax.plot(epochs, history[metric], label=f"{prefix}train")
            if f"val_{metric}" in history:
                ax.plot(
                    epochs,
                    history[f"val_{metric}"],
                    "--",
                    color=line.get_color(),
                    label=f"{prefix}validation",
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        if metric == "loss":
            ax.set_yscale("log")  # early validation spikes of batch-norm models dwarf the rest
        ax.set_title(f"{metric} per epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        path = out_dir / f"{metric}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_confusion(c: Confusion, path: Path, title: str) -> Path:
    """Rows are the true class, columns the predicted class (NORMAL first)."""
    matrix = [[c.tn, c.fp], [c.fn, c.tp]]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues")
    for i in range(2):
        for j in range(2):
            colour = "white" if matrix[i][j] > c.total / 4 else "black"
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color=colour, fontsize=14)
    ax.set_xticks([0, 1], CLASSES)
    ax.set_yticks([0, 1], CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_roc(
    y_true: ArrayLike, scores: ArrayLike, threshold: float, path: Path, title: str
) -> Path:
    """ROC curve with the operating point at ``threshold`` marked."""
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    at = int((thresholds >= threshold).sum()) - 1
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc(y_true, scores):.4f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.plot(fpr[at], tpr[at], "o", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_reliability(
    y_true: ArrayLike, scores: ArrayLike, ece: float, path: Path, title: str
) -> Path:
    """Observed pneumonia fraction against mean predicted P(pneumonia), per probability bin."""
    mean_p, frac, counts = reliability(y_true, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey")
    seen = counts > 0
    ax.plot(mean_p[seen], frac[seen], "o-", label=f"ECE {ece:.4f}")
    ax.set_xlabel("mean predicted P(pneumonia)")
    ax.set_ylabel("observed fraction with pneumonia")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
