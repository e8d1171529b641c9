"""End to end through the command line: train, evaluate and export on real and synthetic images.

Runs are one epoch on a few dozen images; they check what a run leaves behind, not accuracy.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from core.cli import cli
from training.split import CLASSES, list_samples, patient_split

PATIENTS = 14  # per class in train
TEST_IMAGES = 6  # per class in test


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def real_subset(chest_xray_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Kaggle-layout copy: every image of the first patients per class, a few test ones."""
    root = tmp_path_factory.mktemp("real")
    train = list_samples(chest_xray_dir, "train")
    for label in range(len(CLASSES)):
        patients = sorted({s.patient for s in train if s.label == label})[:PATIENTS]
        chosen = [s for s in train if s.label == label and s.patient in patients]
        test = [s for s in list_samples(chest_xray_dir, "test") if s.label == label]
        for sample in chosen + test[:TEST_IMAGES]:
            (root / sample.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(chest_xray_dir / sample.path, root / sample.path)
    return root


def _radiograph(rng: np.random.Generator, pneumonia: bool) -> Image.Image:
    """A 224x224 RGB JPEG: two dark lung fields, with a bright opacity in one when pneumonia."""
    y, x = np.mgrid[0:224, 0:224]
    image = 0.75 + 0.05 * rng.standard_normal((224, 224))
    for cx in (70, 154):
        image[((x - cx) / 40) ** 2 + ((y - 112) / 75) ** 2 < 1] -= 0.45
    if pneumonia:
        cx, cy = rng.choice([70, 154]), rng.integers(70, 150)
        image += 0.35 * np.exp(-(((x - cx) / 22) ** 2 + ((y - cy) / 22) ** 2))
    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kermany-named synthetic radiographs: 2 images per patient, 16 patients per class."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    for split, patients in (("train", 16), ("test", 4)):
        for p in range(patients):
            for k in range(2):
                names = {0: f"IM-{p:04d}-{k + 1:04d}.jpeg", 1: f"person{p}_bacteria_{k}.jpeg"}
                for label, name in names.items():
                    path = root / split / CLASSES[label] / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _radiograph(rng, bool(label)).save(path, quality=90)
    return root


def _train(data: Path, run: Path, model: str, *extra: str) -> Path:
    _invoke(
        "train", "--model", model, "--data", str(data), "--out", str(run), "--epochs", "1",
        "--cache-dir", str(run.parent / "cache"), *extra,
    )  # fmt: skip
    return run


def _manifest(run: Path) -> list[dict[str, str]]:
    with (run / "split.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("model", ["paper1", "paper2", "paper3", "paper4"])
def test_one_epoch_of_each_paper_model(real_subset: Path, tmp_path: Path, model: str) -> None:
    import keras

    run = _train(real_subset, tmp_path / model, model)
    for name in ("config.json", "split.csv", "best.keras", "history.json", "accuracy.png",
                 "loss.png", "validation/metrics.json", "validation/roc.png",
                 "validation/confusion.png"):  # fmt: skip
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["model"] == model
    assert config["config"]["epochs"] == 1
    assert config["config"]["conv_filters"] == [32, 64, 128, 256][: int(model[-1])]
    assert "--model paper" in config["run"]["command"]
    history = json.loads((run / "history.json").read_text())[model]
    assert {len(v) for v in history.values()} == {1}
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history)

    rows = _manifest(run)
    train_patients = {r["patient"] for r in rows if r["subset"] == "train"}
    val_patients = {r["patient"] for r in rows if r["subset"] == "val"}
    assert val_patients
    assert not train_patients & val_patients

    best = keras.saving.load_model(run / "best.keras")
    assert best.input_shape == (None, 64, 64, 1)
    out = best.predict_on_batch(np.zeros((3, 64, 64, 1), np.float32))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    validation = json.loads((run / "validation/metrics.json").read_text())
    assert validation["n"] == len(rows) - len([r for r in rows if r["subset"] == "train"])
    assert validation["threshold"] == 0.5


def test_same_seed_same_run_and_another_seed_another_run(synthetic: Path, tmp_path: Path) -> None:
    a = _train(synthetic, tmp_path / "a", "paper1")
    b = _train(synthetic, tmp_path / "b", "paper1")
    c = _train(synthetic, tmp_path / "c", "paper1", "--seed", "7", "--set", "split_seed=7")
    assert (a / "split.csv").read_bytes() == (b / "split.csv").read_bytes()
    assert (a / "split.csv").read_bytes() != (c / "split.csv").read_bytes()
    assert (a / "history.json").read_text() == (b / "history.json").read_text()


@pytest.fixture(scope="module")
def ensemble_runs(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small cxrnets on one split, different seeds: what an exported ensemble is made of."""
    root = tmp_path_factory.mktemp("runs")
    small = ("--set", "input_size=48", "--set", "conv_filters=[8, 16]", "--set", "batch_size=16")
    return [
        _train(synthetic, root / f"seed{seed}", "cxrnet", "--seed", str(seed), *small)
        for seed in (1, 2)
    ]


def test_recall_threshold_is_chosen_on_validation(ensemble_runs: list[Path]) -> None:
    validation = json.loads((ensemble_runs[0] / "validation/metrics.json").read_text())
    with (ensemble_runs[0] / "validation/predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    scores = np.array([float(r["p_pneumonia"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    t = validation["threshold"]
    assert validation["recall"] >= 0.98
    assert np.all(scores[labels == 1] >= t - 1e-6)  # predictions.csv keeps six decimals
    assert t == pytest.approx(scores[labels == 1].min(), abs=1e-6)


def test_evaluate_writes_metrics_and_plots(synthetic: Path, ensemble_runs: list[Path]) -> None:
    out = ensemble_runs[0] / "test-eval"
    _invoke("evaluate", "--model", str(ensemble_runs[0]), "--data", str(synthetic), "--out",
            str(out), "--cache-dir", str(ensemble_runs[0].parent / "cache"))  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "loss", "precision", "recall", "specificity", "f1", "auc", "ece",
                "threshold"):  # fmt: skip
        assert isinstance(metrics[key], float), key
    assert sum(metrics["confusion"].values()) == metrics["n"] == 16
    validation = json.loads((ensemble_runs[0] / "validation/metrics.json").read_text())
    assert metrics["threshold"] == validation["threshold"]
    for plot in ("accuracy.png", "loss.png", "confusion.png", "roc.png", "reliability.png"):
        assert (out / plot).stat().st_size > 1000, plot
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    predicted = sum(int(r["predicted"]) for r in rows)
    assert predicted == metrics["confusion"]["tp"] + metrics["confusion"]["fp"]


def test_export_round_trip(synthetic: Path, ensemble_runs: list[Path], tmp_path: Path) -> None:
    import keras

    from training.models import ensemble

    cache = str(ensemble_runs[0].parent / "cache")
    runs = [arg for run in ensemble_runs for arg in ("--run", str(run))]
    _invoke("export", *runs, "--data", str(synthetic), "--out", str(tmp_path / "m"),
            "--version", "9.9.9", "--cache-dir", cache)  # fmt: skip
    _invoke("export", *runs[:2], "--data", str(synthetic), "--out", str(tmp_path / "m1"),
            "--cache-dir", cache)  # fmt: skip
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    other = json.loads((tmp_path / "m1" / "model_card.json").read_text())
    for field in ("name", "version", "device_uid", "input_size", "preprocessing", "classes",
                  "threshold", "metrics", "training_manifest_sha256", "created",
                  "training_command"):  # fmt: skip
        assert field in card, field
    assert card["version"] == "9.9.9"
    assert card["input_size"] == 48
    assert card["classes"] == ["NORMAL", "PNEUMONIA"]
    assert "core.preprocess.to_model_input" in card["preprocessing"]
    assert card["device_uid"] != other["device_uid"]
    assert card["device_uid"].replace(".", "").isdigit()
    assert card["metrics"]["test"]["n"] == 16
    assert card["metrics"]["validation"]["recall"] >= 0.98
    assert len(card["training_command"]) == 3
    assert "export" in card["training_command"][-1]
    assert card["architecture"]["members"] == ["cxrnet", "cxrnet"]

    exported = keras.saving.load_model(tmp_path / "m" / "cxr_pneumonia.keras")
    in_memory = ensemble([keras.saving.load_model(run / "best.keras") for run in ensemble_runs])
    images = np.random.default_rng(1).uniform(size=(5, 48, 48, 1)).astype(np.float32)
    expected = in_memory.predict_on_batch(images)
    np.testing.assert_allclose(exported.predict_on_batch(images), expected, atol=1e-6)
    members = [keras.saving.load_model(run / "best.keras").predict_on_batch(images)
               for run in ensemble_runs]  # fmt: skip
    np.testing.assert_allclose(expected, np.mean(members, axis=0), atol=1e-6)

    # Exported without its manifest: evaluating on validation carves the split again and checks it
    out = tmp_path / "val-eval"
    _invoke("evaluate", "--model", str(tmp_path / "m"), "--data", str(synthetic), "--split",
            "val", "--out", str(out), "--cache-dir", cache)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "recall", "auc", "loss"):
        assert metrics[key] == pytest.approx(card["metrics"]["validation"][key], abs=1e-6)


def test_committed_model_meets_the_worker_contract() -> None:
    import keras

    from core.settings import BUNDLED_MODEL

    card = json.loads((BUNDLED_MODEL.parent / "model_card.json").read_text())
    model = keras.saving.load_model(BUNDLED_MODEL)
    size = card["input_size"]
    assert model.input_shape == (None, size, size, 1)
    assert card["classes"] == ["NORMAL", "PNEUMONIA"]
    assert 0.0 < card["threshold"] < 1.0
    out = model.predict_on_batch(np.full((2, size, size, 1), 0.5, np.float32))
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert BUNDLED_MODEL.stat().st_size < 10 * 2**20  # the repository carries it


@pytest.mark.slow
def test_committed_model_reproduces_its_card(
    chest_xray_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cxr-triage evaluate` on the committed model gives the card's (and README's) test figures."""
    from core.settings import BUNDLED_MODEL

    monkeypatch.delenv("CXR_MODEL_PATH", raising=False)  # --model defaults to the bundled model

    card = json.loads((BUNDLED_MODEL.parent / "model_card.json").read_text())
    _invoke("evaluate", "--data", str(chest_xray_dir), "--split", "test", "--out",
            str(tmp_path), "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["model"] == str(BUNDLED_MODEL)
    for key in ("accuracy", "recall", "specificity", "f1", "auc"):
        assert metrics[key] == pytest.approx(card["metrics"]["test"][key], abs=0.005), key
    assert (tmp_path / "accuracy.png").is_file()


def test_real_split_is_reproduced_by_the_committed_card(chest_xray_dir: Path) -> None:
    from core.settings import BUNDLED_MODEL
    from training.split import manifest_sha256

    card = json.loads((BUNDLED_MODEL.parent / "model_card.json").read_text())
    split = patient_split(
        list_samples(chest_xray_dir, "train"), card["split"]["val_fraction"], card["split"]["seed"]
    )
    assert manifest_sha256(split) == card["training_manifest_sha256"]


@pytest.mark.slow
def test_committed_model_sees_a_dicom_as_its_jpeg(
    labelled_dicom_dir: Path, chest_xray_dir: Path
) -> None:
    """The serving path (full-resolution DICOM) and the training path (the dataset's 224x224
    JPEG of the same radiograph) give the committed model the same answer."""
    import keras
    import pydicom

    from core.preprocess import preprocess_dicom
    from core.settings import BUNDLED_MODEL
    from training.data import preprocess_file

    card = json.loads((BUNDLED_MODEL.parent / "model_card.json").read_text())
    model = keras.saving.load_model(BUNDLED_MODEL)
    size, threshold = card["input_size"], card["threshold"]
    with (labelled_dicom_dir / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    dicoms = np.stack([preprocess_dicom(pydicom.dcmread(labelled_dicom_dir / r["file"]), size)
                       for r in rows])  # fmt: skip
    jpegs = np.stack([preprocess_file(chest_xray_dir / r["source_jpeg"], size) for r in rows])
    p_dicom = model.predict_on_batch(dicoms)[:, 1]
    p_jpeg = model.predict_on_batch(jpegs)[:, 1]
    assert len(rows) == 24
    assert np.abs(p_dicom - p_jpeg).max() < 0.1
    np.testing.assert_array_equal(p_dicom >= threshold, p_jpeg >= threshold)
