"""``sslmed data inspect`` and ``sslmed data split`` through click's CliRunner, on the
real covid3 set and on small trees made from its images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from sslmed.app.cli import cli
from sslmed.data.roots import resolve_data_root

DATA = resolve_data_root()
COVID3 = DATA / "covid3"
pytestmark = pytest.mark.needs_data


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_inspect_covid3_finds_the_real_structure(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the repository root, as a user types it
    result = invoke(runner, "data", "inspect", "../shared/data/covid3", "--out", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 1123
    assert report["classes"] == {"Covid-19": 124, "No_findings": 499, "Pneumonia": 500}
    per_class = report["patients"]["per_class"]
    assert per_class["Covid-19"]["patients"] == 0
    assert per_class["No_findings"]["with_patient_id"] == 499 and per_class["Pneumonia"]["with_patient_id"] == 500
    assert report["patients"]["patients"] == 682
    assert report["unreadable"] == [] and report["exact_duplicates"] == []
    assert report["modes"] == {"L": 1123} and report["formats"] == {"PNG": 1123}
    assert report["leaks"]["patients_in_several_splits"] == {}
    sheet = Image.open(report["contact_sheet"])
    assert sheet.format == "PNG" and sheet.height >= 3 * 128
    assert json.loads((tmp_path / "out" / "report.json").read_text())["images"] == 1123


def leaky_tree(tmp_path: Path) -> Path:
    """A csv set with a given split column, an image copied into train and test, and a broken file."""
    folder = tmp_path / "leaky"
    (folder / "images").mkdir(parents=True)
    files = sorted((COVID3 / "images" / "No_findings").glob("*.png"))[:6]
    rows = []
    for i, file in enumerate(files):
        shutil.copy(file, folder / "images" / file.name)
        rows.append([file.name, "No_findings", file.name[:8], "train" if i < 4 else "test"])
    shutil.copy(files[0], folder / "images" / "copy_in_test.png")
    rows.append(["copy_in_test.png", "No_findings", "x1", "test"])
    Image.open(files[1]).resize((200, 200)).save(folder / "images" / "resized_in_test.png")
    rows.append(["resized_in_test.png", "No_findings", "x2", "test"])
    (folder / "images" / "broken.png").write_bytes(files[2].read_bytes()[:500])
    rows.append(["broken.png", "No_findings", "x3", "train"])
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id", "split"])
        writer.writerows(rows)
    return folder


def test_inspect_reports_leaks_duplicates_and_unreadable_files(runner: CliRunner, tmp_path: Path) -> None:
    folder = leaky_tree(tmp_path)
    result = invoke(runner, "data", "inspect", str(folder), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "unreadable files: 1" in text and "broken.png: image is corrupt or truncated" in text
    assert "exact duplicates: 1 group(s)" in text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    leaks = report["leaks"]["duplicates_across_splits"]
    exact = [leak for leak in leaks if leak["kind"] == "exact"]
    assert len(exact) == 1 and {m["split"] for m in exact[0]["images"]} == {"train", "test"}
    near = [leak for leak in leaks if leak["kind"] == "near"]
    assert any("resized_in_test.png" in {m["path"] for m in leak["images"]} for leak in near)
    assert report["splits"]["train"]["images"] == 5  # given split column, broken file included


def test_split_writes_a_file_a_recipe_can_pin(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "covid3_split.csv"
    result = invoke(
        runner, "data", "split", str(COVID3), "--out", str(out), "--seed", "4", "--test-size", "0.25", "--val-size", "0"
    )
    assert result.exit_code == 0, result.output
    assert "split_file:" in result.stdout
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 1123 and {r["split"] for r in rows} == {"train", "test"}
    split_of: dict[str, set[str]] = {}
    for row in rows:
        if row["patient_id"]:
            split_of.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of.values())  # no patient in two splits

    recipe = tmp_path / "pinned.yaml"
    recipe.write_text(f"""
name: pinned
data_root: {DATA}
data:
  covid3: {{name: csv, path: covid3, patient_column: patient_id, split_file: {out}, verify: false}}
steps:
  - name: s
    data: covid3
    backbone: {{name: resnet18, small_input: true}}
    objective: {{name: simclr}}
    augmentations: [{{name: simclr}}]
""")
    result = invoke(runner, "validate", str(recipe))
    assert result.exit_code == 0, result.output
    counts = {r: sum(1 for row in rows if row["split"] == r) for r in ("train", "test")}
    assert f"train {counts['train']}, test {counts['test']}" in result.output

    result = invoke(
        runner, "data", "inspect", "--recipe", str(recipe), "--data", "covid3", "--out", str(tmp_path / "r"), "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split_origin"] == f"file {out}" and report["splits"]["test"]["images"] == counts["test"]


def test_clear_errors(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["data", "inspect", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "Error: data not found:" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["data", "inspect"])
    assert result.exit_code == 2 and "give a SOURCE" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(cli, ["data", "split", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "not a data source sslmed recognises" in result.output


def test_inspect_a_chexpert_release(runner: CliRunner, tmp_path: Path) -> None:
    from test_chexpert import make_tree  # the generated official-layout tree

    tree = make_tree(tmp_path / "chexpert", patients=4, valid_patients=2)
    result = invoke(runner, "data", "inspect", str(tree), "--out", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["task"] == "multilabel" and report["adapter"]["name"] == "chexpert"
    assert report["images"] == 4 * 3 + 2 * 3  # frontal and lateral views
    assert report["patients"]["patients"] == 6 and report["formats"] == {"JPEG": 18}
    assert set(report["splits"]) == {"train", "test"}
    assert Path(report["contact_sheet"]).is_file()
