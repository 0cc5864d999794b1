"""Adapters image_folder, csv and medmnist_npz on the real data in ../shared/data:
patient-wise splits, split files, the on_error policy and every bad-data message."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslmed.artifacts.rundir import RunDir, write_run_data
from sslmed.core.errors import DataError
from sslmed.core.plugins import get_registry
from sslmed.data.readers import ImageDataset
from sslmed.data.roots import resolve_data_root
from sslmed.data.sources import ImageRecord
from sslmed.data.splits import (
    apply_split_file,
    patients_in_several_splits,
    split_file_text,
    split_records,
    write_split_file,
)
from sslmed.default_plugins.datasets import (
    CsvArgs,
    ImageFolderArgs,
    MedMnistArgs,
    build_csv,
    build_image_folder,
    build_medmnist,
)

DATA = resolve_data_root()
COVID3 = DATA / "covid3"
pytestmark = pytest.mark.needs_data

NIH_PATIENT = r"(\d{8})_\d{3}"


@pytest.fixture(scope="module")
def covid3():
    return build_csv(CsvArgs(path="covid3", patient_column="patient_id"), data_root=DATA)


def small_tree(tmp_path: Path, per_class: int = 4) -> Path:
    """A csv dataset in tmp_path made of real covid3 PNGs (copied, never committed)."""
    folder = tmp_path / "small"
    rows = []
    for label in ("No_findings", "Pneumonia"):
        (folder / "images" / label).mkdir(parents=True, exist_ok=True)
        for file in sorted((COVID3 / "images" / label).glob("*.png"))[:per_class]:
            shutil.copy(file, folder / "images" / label / file.name)
            rows.append({"path": f"{label}/{file.name}", "label": label, "patient_id": file.name[:8]})
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


# ------------------------------------------------------------------- real data


def test_covid3_csv_structure(covid3) -> None:
    assert covid3.classes == ["Covid-19", "No_findings", "Pneumonia"]
    everything = covid3.records("all")
    assert [sum(r.label == i for r in everything) for i in range(3)] == [124, 499, 500]
    assert all(r.patient_id for r in everything if r.label > 0)
    assert not any(r.patient_id for r in everything if r.label == 0)
    assert set(covid3.splits) == {"train", "val", "test"}
    assert covid3.skipped == []


def test_covid3_split_is_patient_wise_stratified_and_seeded(covid3) -> None:
    assert patients_in_several_splits(covid3.splits) == {}
    test = covid3.records("test")
    assert 0.17 < len(test) / 1123 < 0.23
    for index, total in enumerate((124, 499, 500)):  # each class keeps its share
        assert abs(sum(r.label == index for r in test) / total - 0.2) < 0.05
    again = build_csv(CsvArgs(path="covid3", patient_column="patient_id", verify=False), data_root=DATA)
    assert again.fingerprint() == covid3.fingerprint()
    other = build_csv(CsvArgs(path="covid3", patient_column="patient_id", verify=False, split_seed=1), data_root=DATA)
    assert other.fingerprint() != covid3.fingerprint()
    assert patients_in_several_splits(other.splits) == {}


def test_image_folder_with_patient_pattern() -> None:
    source = build_image_folder(
        ImageFolderArgs(path="covid3/images", patient_pattern=NIH_PATIENT, verify=False), data_root=DATA
    )
    everything = source.records("all")
    assert len(everything) == 1123 and source.classes == ["Covid-19", "No_findings", "Pneumonia"]
    nih = [r for r in everything if r.label > 0]
    assert all(r.patient_id and len(r.patient_id) == 8 for r in nih)
    assert patients_in_several_splits(source.splits) == {}


def test_split_records_on_a_patient_with_many_images() -> None:
    records = [ImageRecord(f"{i}.png", i % 2, f"p{i // 10}") for i in range(200)]
    splits = split_records(records, 0.2, 0.1, seed=3)
    assert patients_in_several_splits(splits) == {}
    assert sum(len(v) for v in splits.values()) == 200
    with pytest.raises(DataError, match="only 3 patient group"):
        split_records(records[:30], 0.2, 0.0, seed=0)


def test_pneumoniamnist_official_splits() -> None:
    source = build_medmnist(
        MedMnistArgs(path="pneumoniamnist/pneumoniamnist.npz", classes=["normal", "pneumonia"]), data_root=DATA
    )
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 4708, "val": 524, "test": 624}
    assert [sum(r.label == i for r in source.records("test")) for i in (0, 1)] == [234, 390]
    assert source.read(source.records("test")[0].ref, "L").size == (28, 28)


def test_samples_with_mixed_formats_load_through_the_csv_adapter() -> None:
    source = build_csv(CsvArgs(path="samples", test_size=0, val_size=0), data_root=DATA)
    records = source.records("train")
    assert len(records) == 10 and source.root == DATA / "samples"
    modes = {source.read(r.ref, "RGB").mode for r in records}
    assert modes == {"RGB"}
    dataset = ImageDataset(source, records, lambda image: np.asarray(image).shape, mode="L")
    shapes = [dataset[i][0] for i in range(len(dataset))]
    assert all(len(s) == 2 and max(s) <= 2048 for s in shapes)


# ------------------------------------------------------------------ split files


def test_split_file_pins_the_split(covid3, tmp_path: Path) -> None:
    path = write_split_file(covid3, tmp_path / "covid3.csv")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 1123 and set(rows[0]) == {"path", "split", "label", "patient_id"}
    pinned = build_csv(
        CsvArgs(path="covid3", patient_column="patient_id", split_seed=99, split_file=str(path), verify=False),
        data_root=DATA,
    )
    assert pinned.fingerprint() == covid3.fingerprint()
    assert pinned.split_origin.startswith("file ")


def test_split_file_that_does_not_match(tmp_path: Path) -> None:
    records = [ImageRecord(f"{i}.png", 0) for i in range(4)]
    path = tmp_path / "split.csv"
    path.write_text("path,split\n0.png,train\n1.png,test\n9.png,train\n")
    with pytest.raises(
        DataError,
        match=r"does not match the data: 2 image\(s\) of the data are not in it "
        r".*lists 1 image\(s\) the data does not have",
    ):
        apply_split_file(records, path)
    path.write_text("file,split\n")
    with pytest.raises(DataError, match=r"not a split file: missing column\(s\) path"):
        apply_split_file(records, path)
    with pytest.raises(DataError, match=r"split file not found: .*missing\.csv"):
        build_csv(CsvArgs(path="covid3", split_file=str(tmp_path / "missing.csv"), verify=False), data_root=DATA)


def test_run_folder_records_splits_and_skipped(tmp_path: Path) -> None:
    folder = small_tree(tmp_path)
    (folder / "images" / "Pneumonia" / "broken.png").write_bytes(b"")
    with open(folder / "labels.csv", "a") as handle:
        handle.write("Pneumonia/broken.png,Pneumonia,99999999\n")
    source = build_csv(
        CsvArgs(path=str(folder), patient_column="patient_id", test_size=0.25, val_size=0, on_error="skip"),
        data_root=tmp_path,
    )
    run = tmp_path / "run"
    write_run_data(RunDir(run), {"small": source})
    assert (run / "splits" / "small.csv").read_text() == split_file_text(source)
    skipped = list(csv.DictReader(open(run / "skipped" / "small.csv")))
    assert skipped == [{"path": "Pneumonia/broken.png", "split": "all", "reason": "file is empty (0 bytes)"}]
    again = build_csv(
        CsvArgs(
            path=str(folder), patient_column="patient_id", on_error="skip", split_file=str(run / "splits" / "small.csv")
        ),
        data_root=tmp_path,
    )
    assert again.fingerprint() == source.fingerprint()


# ----------------------------------------------------------------- bad data


def test_bad_images_stop_before_training_naming_each(tmp_path: Path) -> None:
    folder = small_tree(tmp_path)
    real = (COVID3 / "images" / "Pneumonia").glob("*.png").__next__().read_bytes()
    bad = {"truncated.png": real[: len(real) // 3], "empty.png": b"", "notes.png": b"this is a text file\n"}
    for name, data in bad.items():
        (folder / "images" / "Pneumonia" / name).write_bytes(data)
    with open(folder / "labels.csv", "a") as handle:
        for name in list(bad) + ["gone.png"]:
            handle.write(f"Pneumonia/{name},Pneumonia,\n")
    with pytest.raises(DataError) as error:
        build_csv(CsvArgs(path=str(folder)), data_root=tmp_path)
    message = str(error.value)
    assert "4 unreadable image file(s)" in message and "on_error: skip" in message
    assert "truncated.png: image is corrupt or truncated" in message
    assert "empty.png: file is empty (0 bytes)" in message
    assert "notes.png: is a text file, not an image" in message
    assert "gone.png: file not found" in message
    source = build_csv(CsvArgs(path=str(folder), on_error="skip", test_size=0, val_size=0), data_root=tmp_path)
    assert sorted(s.ref.split("/")[-1] for s in source.skipped) == [
        "empty.png",
        "gone.png",
        "notes.png",
        "truncated.png",
    ]
    assert len(source.records("train")) == 8
    quick = build_csv(
        CsvArgs(path=str(folder), on_error="skip", verify=False, test_size=0, val_size=0), data_root=tmp_path
    )
    assert [s.ref for s in quick.skipped] == ["Pneumonia/gone.png"]  # without decoding only missing files show


def test_csv_missing_column(tmp_path: Path) -> None:
    folder = small_tree(tmp_path)
    with pytest.raises(
        DataError, match=r"labels\.csv: missing column\(s\) 'subject' \(columns: path, label, patient_id\)"
    ):
        build_csv(CsvArgs(path=str(folder), patient_column="subject"), data_root=tmp_path)


def test_label_not_in_class_list(tmp_path: Path) -> None:
    folder = small_tree(tmp_path)
    with pytest.raises(
        DataError,
        match=r"labels\.csv: 4 label\(s\) not in the class list \['No_findings', 'Covid-19'\]: line 6: 'Pneumonia'",
    ):
        build_csv(CsvArgs(path=str(folder), classes=["No_findings", "Covid-19"]), data_root=tmp_path)


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset folder not found: .*nowhere"):
        build_csv(CsvArgs(path="nowhere"), data_root=tmp_path)
    with pytest.raises(DataError, match=r"image folder not found"):
        build_image_folder(ImageFolderArgs(path="nowhere"), data_root=tmp_path)
    with pytest.raises(
        DataError, match=r"no sub-folder for class\(es\) Edema \(found: Covid-19, No_findings, Pneumonia\)"
    ):
        build_image_folder(
            ImageFolderArgs(path=str(COVID3 / "images"), classes=["Pneumonia", "Edema"]), data_root=tmp_path
        )
    folder = small_tree(tmp_path)
    (folder / "labels.csv").unlink()
    with pytest.raises(DataError, match=r"CSV file not found: .*labels\.csv"):
        build_csv(CsvArgs(path=str(folder)), data_root=tmp_path)


def test_not_a_csv(tmp_path: Path) -> None:
    folder = small_tree(tmp_path)
    Image.new("L", (8, 8)).save(folder / "labels.csv", format="PNG")
    with pytest.raises(DataError, match=r"labels\.csv: not a UTF-8 text CSV file"):
        build_csv(CsvArgs(path=str(folder)), data_root=tmp_path)


def test_arguments_are_checked_by_the_registry() -> None:
    component = get_registry().get("dataset", "csv")
    with pytest.raises(Exception, match="on_error"):
        component.parse_args({"path": "x", "on_error": "ignore"})
    with pytest.raises(Exception, match="extra"):
        component.parse_args({"path": "x", "split_fle": "y"})
    assert {"chexpert", "csv", "image_folder", "medmnist_npz"} <= set(get_registry().names("dataset"))


def test_partly_labelled_csv_keeps_unlabelled_images_for_pre_training(data_dir: Path) -> None:
    """cxr_corpus labels its radiography/ images only: empty labels are unlabelled images."""
    source = build_csv(CsvArgs(path="cxr_corpus", verify=False, test_size=0, val_size=0), data_root=data_dir)
    records = source.records("all")
    assert source.classes == ["COVID", "Normal"]
    assert len(records) == 22_548
    labels = [r.label for r in records]
    assert (labels.count(0), labels.count(1), labels.count(-1)) == (2_831, 10_136, 9_581)
    unlabelled = [r for r in records if not r.is_labelled]
    assert all(str(r.ref).startswith("mednist_cxr/") for r in unlabelled)
    assert source.summary()["splits"]["train"]["unlabelled"] == 9_581
