"""``cxr-triage train``, ``evaluate`` and ``export``.

TensorFlow is imported inside the commands, so ``cxr-triage --help`` stays fast.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click

from core.settings import Settings
from training.config import PRESETS, resolve

DEFAULT_CACHE = Path("runs/cache")

_data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Dataset in the Kaggle layout DIR/{train,test}/{NORMAL,PNEUMONIA} [CXR_DATASET_DIR].",
)
_cache_option = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_CACHE,
    show_default=True,
    help="Where preprocessed image arrays are cached (.npy).",
)


def _dataset(settings: Settings, data_dir: Path | None) -> Path:
    path = data_dir or settings.dataset_dir
    if path is None:
        raise click.UsageError("give --data DIR or set CXR_DATASET_DIR")
    return path


def _command_line(ctx: click.Context) -> str:
    """The invocation, rebuilt from the parsed parameters (recorded in configs and cards)."""
    words = ["cxr-triage", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value == () or not isinstance(param, click.Option):
            continue
        for item in value if isinstance(value, tuple) else (value,):
            words += [param.opts[0], str(item)]
    return shlex.join(words)


def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not FIELD=VALUE", param_hint="--set")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


@click.command()
@click.option("--model", "model_name", type=click.Choice(list(PRESETS)), required=True)
@_data_option
@click.option("--out", "run_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--epochs", type=click.IntRange(min=1), help="Override the preset's epochs.")
@click.option(
    "--seed", type=int, help="Override the preset's seed (weights, batch order, augmentation)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Override any config field (JSON value; dotted for augment.*), e.g. --set input_size=96.",
)
@_cache_option
@click.pass_context
def train(
    ctx: click.Context,
    model_name: str,
    data_dir: Path | None,
    run_dir: Path,
    epochs: int | None,
    seed: int | None,
    overrides: tuple[str, ...],
    cache_dir: Path,
) -> None:
    """Train a model into a run directory: config, split, best checkpoint, history, plots."""
    from training.train import train as run_training

    values = _parse_overrides(overrides)
    if epochs is not None:
        values["epochs"] = epochs
    if seed is not None:
        values["seed"] = seed
    try:
        cfg = resolve(model_name, values)
    except (KeyError, TypeError) as error:
        raise click.BadParameter(str(error), param_hint="--set") from error
    dataset = _dataset(ctx.obj, data_dir)
    metrics = run_training(cfg, dataset, run_dir, cache_dir, _command_line(ctx))
    click.echo(
        f"{cfg.model}: validation accuracy {metrics['accuracy']:.4f}, "
        f"recall {metrics['recall']:.4f}, AUC {metrics['auc']:.4f} "
        f"at threshold {metrics['threshold']:.4f}; run in {run_dir}"
    )


@click.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path, exists=True),
    help="A .keras file, a run directory or an export directory [the committed model].",
)
@_data_option
@click.option(
    "--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True
)
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--threshold", type=click.FloatRange(0, 1), help="Override the model's threshold.")
@_cache_option
@click.pass_context
def evaluate(
    ctx: click.Context,
    model_path: Path | None,
    data_dir: Path | None,
    split: str,
    out_dir: Path,
    threshold: float | None,
    cache_dir: Path,
) -> None:
    """Evaluate a model on a split: metrics.json, confusion matrix, ROC, reliability, curves."""
    from training.evaluate import evaluate as run_evaluation

    path = model_path or ctx.obj.model_path
    metrics = run_evaluation(
        path, _dataset(ctx.obj, data_dir), split, out_dir, cache_dir, threshold
    )
    click.echo(
        f"{split}: accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
        f"recall {metrics['recall']:.4f}, specificity {metrics['specificity']:.4f}, "
        f"F1 {metrics['f1']:.4f}, AUC {metrics['auc']:.4f}, ECE {metrics['ece']:.4f} "
        f"at threshold {metrics['threshold']:.4f}; written to {out_dir}"
    )


@click.command()
@click.option(
    "--run",
    "run_dirs",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    multiple=True,
    required=True,
    help="A training run directory; repeat to export the mean of several (an ensemble).",
)
@_data_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the model and card go [the directory of CXR_MODEL_PATH, the bundled model].",
)
@click.option("--version", default="1.0.0", show_default=True, help="Model version for the card.")
@_cache_option
@click.pass_context
def export(
    ctx: click.Context,
    run_dirs: tuple[Path, ...],
    data_dir: Path | None,
    out_dir: Path | None,
    version: str,
    cache_dir: Path,
) -> None:
    """Export runs as the worker's model: cxr_pneumonia.keras, model_card.json, history.json."""
    from training.export import export as run_export

    target = out_dir or ctx.obj.model_path.parent
    card = run_export(
        run_dirs,
        _dataset(ctx.obj, data_dir),
        target,
        version,
        _command_line(ctx),
        cache_dir,
        uid_root=ctx.obj.uid_root,
    )
    test = card["metrics"]["test"]
    click.echo(
        f"exported {card['name']} {card['version']} ({card['device_uid']}) to {target}: "
        f"threshold {card['threshold']:.4f}; test accuracy {test['accuracy']:.4f}, "
        f"recall {test['recall']:.4f}, AUC {test['auc']:.4f}"
    )
