"""``sslmed predict RUN DIR|CSV --out`` and ``sslmed embed``: one row per input (an
unreadable file is a row with its error), the same numbers as the predictor, atomic
outputs, and an interrupted run continues where it stopped."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import sslmed.serving.batch_predict as batch_predict
from sslmed.app.cli import cli
from sslmed.serving.predict import Predictor
from sslmed.testing.models import covid3_records, shared_model_export


@pytest.fixture(scope="module")
def model_dir(data_dir: Path) -> Path:
    return shared_model_export(data_dir)


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor(model_dir, device="cpu")


@pytest.fixture
def archive(data_dir: Path, tmp_path: Path) -> Path:
    """7 real covid3 images in two sub-folders and one broken file."""
    folder = tmp_path / "archive"
    for i, (path, label) in enumerate(covid3_records(data_dir, 2) + covid3_records(data_dir, 1, skip=2)[:1]):
        (folder / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / label / f"{i}{path.suffix}")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def interrupt_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the next archive run stop (Ctrl-C) after ``n`` batches."""
    real = batch_predict.batches

    def batches(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == n:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(batch_predict, "batches", batches)


def test_predict_folder_to_csv(model_dir: Path, predictor: Predictor, archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions.csv"
    args = ["predict", str(model_dir), str(archive), "--out", str(out), "--workers", "0", "--batch-size", "3"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"out": str(out), "images": 8, "failed": 1, "resumed": 0}
    assert "1 of 8 image(s) could not be read" in result.output
    rows = read_rows(out)
    assert [r["path"] for r in rows] == sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*.png"))
    broken = next(r for r in rows if r["path"] == "broken.png")
    assert "broken.png" in broken["error"] and broken[predictor.classes[0]] == ""
    rows.remove(broken)
    expected = predictor.analyse([archive / r["path"] for r in rows])
    for row, answer in zip(rows, expected, strict=True):
        assert row["error"] == ""
        assert [float(row[c]) for c in predictor.classes] == pytest.approx(
            list(answer.probabilities.values()), abs=1e-5
        )
        assert row["ood_flag"] == str(answer.ood_flag).lower()
        assert row["predicted"] == max(answer.probabilities, key=answer.probabilities.get)
    assert not list(tmp_path.glob("*.partial"))


def test_interrupted_predict_continues(
    model_dir: Path, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = tmp_path / "whole.csv"
    batch_predict.predict_archive(model_dir, archive, whole, batch_size=3, workers=0, progress=False)
    out = tmp_path / "resumed.csv"
    interrupt_after(monkeypatch, 2)
    result = CliRunner().invoke(cli, ["predict", str(model_dir), str(archive), "--out", str(out), "--batch-size", "3"])
    assert result.exit_code != 0 and "run the same command again to continue" in result.output
    assert not out.exists() and len(read_rows(out.with_name("resumed.csv.partial"))) == 6
    with open(out.with_name("resumed.csv.partial"), "a") as handle:
        handle.write("0/half-written,0.1")  # a line cut by the interruption
    monkeypatch.undo()
    counts = batch_predict.predict_archive(model_dir, archive, out, batch_size=3, workers=0, progress=False)
    assert counts == {"images": 8, "failed": 1, "resumed": 6}
    assert out.read_text() == whole.read_text()


def test_csv_input_and_one_line_errors(model_dir: Path, archive: Path, tmp_path: Path) -> None:
    listing = archive / "list.csv"
    names = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*/*.png"))[:2] + [
        "broken.png",
        "missing.png",
    ]
    listing.write_text("path,label\n" + "".join(f"{n},x\n" for n in names))
    out = tmp_path / "p.csv"
    counts = batch_predict.predict_archive(model_dir, listing, out, workers=0, progress=False)
    rows = read_rows(out)
    assert [r["path"] for r in rows] == names and counts["failed"] == 2  # broken.png and missing.png
    assert "missing.png" in rows[-1]["error"]
    result = CliRunner().invoke(cli, ["embed", str(model_dir), str(archive), "--out", str(tmp_path / "e.txt")])
    assert result.exit_code == 2 and "must end in .npy or .parquet" in result.output
    result = CliRunner().invoke(cli, ["predict", str(model_dir), str(tmp_path / "nowhere"), "--out", str(out)])
    assert result.exit_code == 2 and "nowhere: not found" in result.output


def test_embeddings_npy_parquet_and_resume(
    model_dir: Path, predictor: Predictor, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "embeddings.npy"
    interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        batch_predict.embed_archive(model_dir, archive, out, batch_size=3, workers=0, progress=False)
    monkeypatch.undo()
    assert not out.exists()
    result = CliRunner().invoke(cli, ["embed", str(model_dir), str(archive), "--out", str(out), "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["resumed"] == 3
    matrix = np.load(out)
    rows = read_rows(batch_predict.paths_file(out))
    assert matrix.shape == (8, predictor.model.backbone.feature_dim) and len(rows) == 8
    good = [i for i, r in enumerate(rows) if r["path"] != "broken.png"]
    broken = next(i for i, r in enumerate(rows) if r["path"] == "broken.png")
    assert rows[broken]["error"] and np.isnan(matrix[broken]).all() and len(good) == 7
    features = np.stack([_embed(predictor, archive / rows[i]["path"]) for i in good])
    np.testing.assert_allclose(matrix[good], features, atol=1e-5)
    pq = pytest.importorskip("pyarrow.parquet")
    parquet = tmp_path / "embeddings.parquet"
    batch_predict.embed_archive(model_dir, archive, parquet, workers=0, progress=False)
    table = pq.read_table(parquet)
    assert table.column("path").to_pylist() == [r["path"] for r in rows]
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist())[good], matrix[good], atol=1e-5)


def _embed(predictor: Predictor, path: Path) -> np.ndarray:
    return predictor.forward_batch(predictor.model_input(predictor.load(path)))[1][0]


def test_the_archive_flag_is_the_predictors_own_both_checks(model_dir: Path, archive: Path, tmp_path: Path) -> None:
    """An image flagged only by the input-statistics gate is flagged in the CSV too, as on
    the page and in `sslmed predict` (one flag, two checks)."""
    predictor = Predictor(model_dir, device="cpu")
    assert predictor.ood is not None and predictor.gate is not None, "the test export has both checks"
    predictor.ood.threshold = float("inf")  # the feature distance flags nothing
    predictor.gate.threshold = float("-inf")  # the gate flags everything
    out = tmp_path / "flags.csv"
    batch_predict.predict_archive(predictor, archive, out, batch_size=4, workers=0, progress=False)
    rows = [r for r in read_rows(out) if not r["error"]]
    assert len(rows) == 7 and {r["ood_flag"] for r in rows} == {"true"}
    predictor.gate.threshold = float("inf")
    again = tmp_path / "quiet.csv"
    batch_predict.predict_archive(predictor, archive, again, batch_size=4, workers=0, progress=False)
    assert {r["ood_flag"] for r in read_rows(again) if not r["error"]} == {"false"}
