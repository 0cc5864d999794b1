"""The ``union`` corpus: pooled sources, excluded test images and patients, reading."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sslmed.core.errors import DataError, UsageError
from sslmed.core.plugins import get_registry
from sslmed.default_plugins.union import record_key

COVID3 = {"name": "csv", "path": "covid3", "patient_column": "patient_id", "test_size": 0.2, "val_size": 0.1}
PMNIST = {"name": "medmnist_npz", "path": "pneumoniamnist/pneumoniamnist.npz"}
HANNOVER = {"name": "csv", "path": "covid_extra_hannover", "patient_column": "patient_id"}


def build(spec: dict, data_dir: Path):
    return get_registry().build("dataset", spec, data_root=data_dir)


def test_pools_sources_and_excludes_the_target_test_split(data_dir: Path):
    corpus = build(
        {
            "name": "union",
            "sources": [
                {"dataset": COVID3, "split": "all"},
                {"dataset": {"name": "csv", "path": "covid_extra_cxnet"}},
                {"dataset": HANNOVER},
                {"dataset": PMNIST, "split": "train"},
            ],
            "exclude": [{"dataset": COVID3, "split": "test"}],
        },
        data_dir,
    )
    covid3, pmnist = build(COVID3, data_dir), build(PMNIST, data_dir)
    test = covid3.records("test")
    assert list(corpus.splits) == ["train"]
    records = corpus.records("train")
    expected = len(covid3.records("all")) - len(test) + 809 + 243 + len(pmnist.records("train"))
    assert len(records) == expected
    assert corpus.details["excluded_by_path"] == len(test)
    assert all(r.label == -1 for r in records)
    # no test image and no test patient in the corpus
    test_keys = {record_key(covid3, r.ref) for r in test}
    test_patients = {r.patient_id for r in test if r.patient_id}
    covid3_refs = {r.ref.split(":", 1)[1] for r in records if r.ref.startswith("0:")}
    assert not test_keys & {record_key(covid3, ref) for ref in covid3_refs}
    assert not test_patients & {r.patient_id for r in records if r.patient_id}
    # the refs read across sources: one image of each
    for index in range(4):
        ref = next(r.ref for r in records if r.ref.startswith(f"{index}:"))
        image = corpus.read(ref, "L")
        assert image.mode == "L" and min(image.size) >= 28
    assert corpus.summary()["union"]["excluded_by_path"] == len(test)


def test_excludes_other_images_of_an_excluded_patient(data_dir: Path, tmp_path: Path):
    hannover = build(HANNOVER, data_dir)
    by_patient: dict[str, list] = {}
    for record in hannover.records("all"):
        by_patient.setdefault(record.patient_id, []).append(record)
    patient, images = max(by_patient.items(), key=lambda item: len(item[1]))
    assert len(images) >= 2
    one = tmp_path / "one.csv"
    with open(one, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id"])
        writer.writerow([images[0].ref, "COVID-19", patient])
    excluded = {
        "name": "csv",
        "path": str(data_dir / "covid_extra_hannover"),
        "csv": str(one),
        "patient_column": "patient_id",
        "test_size": 0,
        "val_size": 0,
    }
    corpus = build({"name": "union", "sources": [{"dataset": HANNOVER}], "exclude": [{"dataset": excluded}]}, data_dir)
    assert corpus.details["excluded_by_path"] == 1
    assert corpus.details["excluded_by_patient"] == len(images) - 1
    assert len(corpus.records("train")) == len(hannover.records("all")) - len(images)
    kept = build(
        {
            "name": "union",
            "sources": [{"dataset": HANNOVER}],
            "exclude": [{"dataset": excluded}],
            "exclude_patients": False,
        },
        data_dir,
    )
    assert len(kept.records("train")) == len(hannover.records("all")) - 1


def test_clear_errors(data_dir: Path):
    with pytest.raises(DataError, match=r"sources\[0\].*not found"):
        build({"name": "union", "sources": [{"dataset": {"name": "csv", "path": "no_such_set"}}]}, data_dir)
    with pytest.raises(UsageError, match="unknown dataset"):
        build({"name": "union", "sources": [{"dataset": {"name": "cvs", "path": "covid3"}}]}, data_dir)
    with pytest.raises(UsageError, match="no split"):
        build({"name": "union", "sources": [{"dataset": PMNIST, "split": "training"}]}, data_dir)
    with pytest.raises(DataError, match="empty"):
        build(
            {
                "name": "union",
                "sources": [{"dataset": PMNIST, "split": "test"}],
                "exclude": [{"dataset": PMNIST, "split": "test"}],
            },
            data_dir,
        )


def test_shipped_recipes_use_a_corpus_without_the_target(data_dir: Path):
    from sslmed.app.prepare import build_sources, load_recipe_file

    repo = Path(__file__).resolve().parents[2]
    recipe, registry = load_recipe_file(repo / "recipes" / "crsm_transfer.yaml", (f"data_root={data_dir}",))
    sources = build_sources(recipe, registry)
    corpus = sources["corpus_no_pneumoniamnist"]
    assert {p["path"] for p in corpus.details["sources"]} == {"covid3", "covid_extra_cxnet", "covid_extra_hannover"}
    assert recipe.evaluation is not None and recipe.evaluation.data == "pneumoniamnist"


def test_excludes_the_same_radiograph_stored_under_another_name(data_dir: Path):
    """cxr_corpus holds copies of covid3 and covid_extra_* radiographs under other file
    names: path and patient cannot catch them, the content hash must."""
    from sslmed.default_plugins.union import content_key

    corpus_spec = {"name": "csv", "path": "cxr_corpus", "label_column": None, "test_size": 0, "val_size": 0}
    corpus_spec["verify"] = False
    cxnet = {"name": "csv", "path": "covid_extra_cxnet"}
    pooled = build(
        {"name": "union", "sources": [{"dataset": corpus_spec}], "exclude": [{"dataset": COVID3}, {"dataset": cxnet}]},
        data_dir,
    )
    # the shared copy's corpus repeats 38 covid3 and 67 covid_extra_cxnet radiographs
    assert pooled.details["excluded_by_path"] == 0
    assert pooled.details["excluded_by_content"] >= 100
    assert len(pooled.records("train")) == 22548 - pooled.details["excluded_by_content"]
    excluded = {
        content_key(s, r.ref) for s in (build(COVID3, data_dir), build(cxnet, data_dir)) for r in s.records("all")
    }
    kept = {content_key(pooled, r.ref) for r in pooled.records("train")}
    assert not excluded & kept
    # switched off, the copies stay
    kept_all = build(
        {
            "name": "union",
            "sources": [{"dataset": corpus_spec}],
            "exclude": [{"dataset": COVID3}],
            "exclude_duplicates": False,
        },
        data_dir,
    )
    assert len(kept_all.records("train")) == 22548
