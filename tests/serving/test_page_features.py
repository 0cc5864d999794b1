"""The page's examples (the run's own test images, never a class the model lacks),
Grad-CAM on a stage large enough to localise, many images at once, and the export's
own measurement of its out-of-distribution check. No server: the service and helpers."""

from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from sslmed.core.plugins import get_registry
from sslmed.serving.explain import grad_cam
from sslmed.serving.predict import Classifier, Predictor
from sslmed.serving.web.cards import model_card, ood_weak_note, trained_on
from sslmed.serving.web.examples import data_root_examples, find_examples, folder_examples
from sslmed.serving.web.page import build_demo, example_outcome
from sslmed.serving.web.service import DemoService, batch_columns
from sslmed.testing.dicom import IDENTIFIERS, identified_dicom
from sslmed.testing.models import shared_model_export

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


def _classifier(small_input: bool) -> Classifier:
    torch.manual_seed(0)
    backbone = get_registry().build("backbone", {"name": "resnet18", "small_input": small_input}, in_channels=1)
    return Classifier(backbone, 2).eval()


@pytest.mark.parametrize(
    ("small_input", "size", "layer", "side"),
    [(False, 32, "layer2", 4), (False, 64, "layer3", 4), (False, 128, "layer4", 4), (True, 32, "layer4", 4)],
)
def test_grad_cam_takes_the_deepest_stage_with_4x4_positions(small_input: bool, size: int, layer: str, side: int):
    model = _classifier(small_input)
    result = grad_cam(model, torch.randn(1, 1, size, size))
    assert result.layer == layer and result.size == (side, side) and result.cam.shape == (side, side)
    assert f"`{layer}`" in result.caption() and f"{side}×{side}" in result.caption()
    assert not any(m._forward_hooks for _, m in model.backbone.stages()), "every hook is removed"
    assert all(p.grad is None for p in model.parameters())


def test_grad_cam_says_so_when_no_stage_is_large_enough():
    result = grad_cam(_classifier(False), torch.randn(1, 1, 12, 12))  # layer1 is 3×3 at 12 px
    assert result.cam is None and result.layer is None and result.size == (3, 3)
    assert "not shown" in result.caption() and "3×3" in result.caption()


@pytest.fixture(scope="module")
def export(data_dir: Path) -> Path:
    return shared_model_export(data_dir, per_class=4)


def _fake_run(tmp_path: Path, export: Path, data_dir: Path) -> Path:
    """A run folder around a copy of ``export``: recipe, split file, model/ trained on 'covid3'."""
    run = tmp_path / "run"
    shutil.copytree(export, run / "model")
    meta = json.loads((run / "model" / "model.json").read_text())
    (run / "model" / "model.json").write_text(json.dumps({**meta, "data": "covid3"}))
    (run / "recipe.yaml").write_text(f"name: t\ndata_root: {data_dir}\ndata:\n  covid3: {{name: csv, path: covid3}}\n")
    with open(data_dir / "covid3" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    (run / "splits").mkdir()
    with open(run / "splits" / "covid3.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "split", "label", "patient_id"])
        for i, row in enumerate(rows):
            writer.writerow([row["path"], "test" if i % 10 == 0 else "train", row["label"], ""])
    return run


def test_examples_are_the_runs_test_images_with_their_true_labels(tmp_path: Path, export: Path, data_dir: Path):
    run = _fake_run(tmp_path, export, data_dir)
    predictor = Predictor(run, device="cpu")
    found = find_examples(predictor.model_dir, predictor.meta)
    split = {r["path"]: r["split"] for r in csv.DictReader(open(run / "splits" / "covid3.csv"))}
    assert [e.label for e in found] == [c for c in predictor.classes for _ in range(3)]
    for example in found:
        ref = example.path.relative_to((data_dir / "covid3" / "images").resolve()).as_posix()
        assert split[ref] == "test" and example.origin == "test split of covid3"
        assert f"(true: {example.label})" in example.caption
    assert "**right**" in example_outcome(found[0], found[0].label)
    assert "**wrong**" in example_outcome(found[0], "something else")
    assert example_outcome(None, "x") == ""
    demo = build_demo(predictor)  # the page offers exactly these, and serves only these files
    assert demo.sslmed_examples == [str(e.path) for e in found]


def test_without_the_run_examples_match_the_models_classes(data_dir: Path, export: Path):
    meta = json.loads((export / "model.json").read_text())
    found = data_root_examples(meta, data_dir)
    assert found and {e.label for e in found} <= set(meta["classes"])
    kermany_like = {"classes": ["normal", "pneumonia"], "data": "kermany"}
    kermany = data_root_examples(kermany_like, data_dir)
    assert {e.label for e in kermany} == {"normal", "pneumonia"}
    assert all("/kermany/images/test/" in str(e.path) for e in kermany), "test images first"
    # a folder of other sets' samples: nothing labelled with a class the model lacks
    shown = folder_examples(data_dir / "samples", kermany_like["classes"])
    assert all(e.label in (None, "pneumonia") for e in shown)
    labels = {r["path"]: r["label"] for r in csv.DictReader(open(data_dir / "samples" / "labels.csv"))}
    assert shown and all(labels[e.path.name] == "Pneumonia" for e in shown)  # never COVID-19 or No_findings


def _png(tmp_path: Path, name: str, source: Path) -> Path:
    target = tmp_path / name
    shutil.copy(source, target)
    return target


def test_many_images_at_once_give_a_table_and_csv_with_a_row_per_bad_file(tmp_path: Path, export: Path, data_dir):
    service = DemoService(Predictor(export, device="cpu"), max_upload_mb=0.2)
    samples = sorted((data_dir / "kermany" / "images" / "test" / "NORMAL").glob("*.jpeg"))[:3]
    good = [_png(tmp_path, f"good{i}.jpeg", p) for i, p in enumerate(samples[:2])]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 300_000)
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(samples[2], "inner/one.jpeg")
        handle.writestr("inner/readme.txt", "skipped: not an image name")
        handle.writestr("inner/broken.png", b"garbage")
    rows = service.classify_many([str(p) for p in (*good, bad, big, archive)])
    by_file = {row.file: row for row in rows}
    assert list(by_file) == ["good0.jpeg", "good1.jpeg", "notes.png", "big.png", "batch.zip/inner/one.jpeg",
                             "batch.zip/inner/broken.png"]  # fmt: skip
    for name in ("good0.jpeg", "good1.jpeg", "batch.zip/inner/one.jpeg"):
        row = by_file[name]
        assert row.error is None and row.label in service.predictor.classes
        assert sum(row.prediction.probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert row.prediction.ood_flag is not None
    assert "could not" in by_file["notes.png"].error or "not" in by_file["notes.png"].error
    assert "limit is 0.2 MB" in by_file["big.png"].error
    assert by_file["batch.zip/inner/broken.png"].error
    table = list(csv.reader(io.StringIO(service.batch_csv(rows))))
    assert table[0] == batch_columns(service.predictor.classes) and len(table) == 1 + len(rows)
    assert table[1][1] == by_file["good0.jpeg"].label and table[3][-1] == by_file["notes.png"].error


def _not_cxr_hand() -> Path:
    from sslmed.serving.detection import not_cxr_images

    return next(path for path, category in not_cxr_images(per_category=1) if category == "Hand")


def test_every_export_measures_its_own_ood_detection(export: Path):
    predictor = Predictor(export, device="cpu")
    measured = predictor.meta["ood"]["measured"]
    assert predictor.gate is not None  # the input-statistics gate is fitted and stored with every export
    answer = predictor.analyse([_not_cxr_hand()])[0].as_dict()
    assert answer["out_of_distribution"]["flagged"] and "input_gate" in answer["out_of_distribution"]
    assert measured["not_cxr_images"] == 20 and set(measured["not_cxr_per_category"]) == {
        "AbdomenCT", "BreastMRI", "ChestCT", "Hand", "HeadCT"}  # fmt: skip
    assert 0 <= measured["not_cxr_flagged"] <= 1 and measured["test_images"] == 12
    assert measured["works"] == (measured["not_cxr_flagged"] >= 0.9 and measured["test_flagged"] <= 0.05)
    card = model_card(predictor)
    assert f"{measured['not_cxr_flagged']:.0%} of 20 images that are not chest radiographs" in card
    assert "flags" in trained_on(predictor)
    note = ood_weak_note(predictor.meta)
    assert (note == "") == measured["works"]
    if not measured["works"]:
        assert "check is weak" in card and "Weak out-of-distribution check" in note
    unmeasured = {"ood": {k: v for k, v in predictor.meta["ood"].items() if k != "measured"}}
    assert "not measured" in ood_weak_note(unmeasured)


def test_dicom_shows_what_explains_the_picture_and_never_an_identifier(
    tmp_path: Path, export: Path, caplog: pytest.LogCaptureFixture
):
    from sslmed.serving.web.service import dicom_markdown

    path = tmp_path / "study.dcm"
    path.write_bytes(identified_dicom())
    service = DemoService(Predictor(export, device="cpu"))
    with caplog.at_level("DEBUG"):
        fields = service.dicom_fields(str(path))
        answer = service.analyse(str(path)).as_dict()
        rows = service.classify_many([str(path)])
    assert fields == {
        "modality": "CR",
        "view_position": "PA",
        "photometric_interpretation": "MONOCHROME2",
        "bits_stored": "16",
        "window": "centre 2000, width 3000 (LINEAR, from the file)",
    }
    assert service.dicom_fields(path.read_bytes()) == fields
    assert service.dicom_fields(str(export / "model.json")) is None
    note = dicom_markdown(fields)
    assert "View position | PA" in note and "Window applied" in note
    shown = json.dumps([fields, answer, note, service.batch_csv(rows)]) + caplog.text
    for value in IDENTIFIERS.values():
        assert value not in shown and value.replace("^", " ") not in shown
