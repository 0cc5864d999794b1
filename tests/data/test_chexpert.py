"""The chexpert adapter on a generated tree in the official layout (the real header, the
real value conventions, JPEGs made from real radiographs in ../shared/data/covid3)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslmed.core.errors import DataError
from sslmed.core.plugins import get_registry
from sslmed.core.tasks import targets_matrix
from sslmed.data.readers import ImageDataset
from sslmed.data.roots import resolve_data_root
from sslmed.data.splits import patients_in_several_splits
from sslmed.default_plugins.chexpert import FINDINGS, HEADER, ChexpertArgs, build_chexpert, patient_of, target_value

DATA = resolve_data_root()
COVID3 = DATA / "covid3" / "images"
pytestmark = pytest.mark.needs_data

OFFICIAL_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices"
)
CYCLE = ("1.0", "0.0", "-1.0", "")  # positive, negative, uncertain, not mentioned


def cell(patient: int, study: int, view: int, finding: int) -> str:
    """The (deterministic) label cell of one image and finding, cycling through every value."""
    return CYCLE[(patient + study + view + finding) % 4]


def make_tree(root: Path, patients: int = 12, valid_patients: int = 3) -> Path:
    """``root/CheXpert-v1.0-small/{train,valid}.csv`` and the JPEGs they list."""
    release = root / "CheXpert-v1.0-small"
    sources = sorted((COVID3 / "Pneumonia").glob("*.png"))
    n = 0
    for table, split, first, count in (
        ("train.csv", "train", 1, patients),
        ("valid.csv", "valid", 64541, valid_patients),
    ):
        rows = []
        for p in range(first, first + count):
            for study in (1, 2):
                for view, kind in ((1, "frontal"), (2, "lateral")):
                    if kind == "lateral" and study == 2:
                        continue
                    rel = f"CheXpert-v1.0-small/{split}/patient{p:05d}/study{study}/view{view}_{kind}.jpg"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.open(sources[n % len(sources)]).convert("L").resize((64, 64)).save(root / rel, quality=85)
                    n += 1
                    values = [cell(p, study, view, f) for f in range(len(FINDINGS))]
                    if split == "valid":  # the official valid.csv has no uncertain or blank labels
                        values = ["1.0" if v == "1.0" else "0.0" for v in values]
                    rows.append(
                        [
                            rel,
                            "Female" if p % 2 else "Male",
                            str(40 + p),
                            "Frontal" if kind == "frontal" else "Lateral",
                            "AP" if kind == "frontal" else "",
                            *values,
                        ]
                    )
        release.mkdir(parents=True, exist_ok=True)
        with open(release / table, "w", newline="") as handle:
            handle.write(OFFICIAL_HEADER + "\n")
            csv.writer(handle, lineterminator="\n").writerows(rows)
    return root


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "chexpert")


def rows_of(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path)))


def test_the_header_is_the_official_one() -> None:
    assert ",".join(HEADER) == OFFICIAL_HEADER


@pytest.mark.parametrize("uncertainty", ["ignore", "zeros", "ones"])
@pytest.mark.parametrize("blank", ["negative", "ignore"])
def test_policies_value_by_value(tree: Path, uncertainty: str, blank: str) -> None:
    findings = list(FINDINGS)
    source = build_chexpert(
        ChexpertArgs(path=str(tree), findings=findings, uncertainty=uncertainty, blank=blank, frontal_only=False),
        data_root=tree,
    )
    assert source.task == "multilabel" and source.classes == findings
    rows = {r["Path"]: r for r in rows_of(tree / "CheXpert-v1.0-small" / "train.csv")}
    expected_value = {
        "1.0": 1.0,
        "0.0": 0.0,
        "-1.0": {"ignore": math.nan, "zeros": 0.0, "ones": 1.0}[uncertainty],
        "": 0.0 if blank == "negative" else math.nan,
    }
    checked = 0
    for record in source.records("train"):
        for finding, got in zip(findings, record.targets, strict=False):
            want = expected_value[rows[record.ref][finding]]
            assert (math.isnan(got) and math.isnan(want)) or got == want, (record.ref, finding, got, want)
            checked += 1
    assert checked == 36 * 14


def test_per_finding_policies(tree: Path) -> None:
    args = ChexpertArgs(
        path=str(tree),
        findings=["Atelectasis", "Edema", "Cardiomegaly"],
        uncertainty={"Atelectasis": "ones", "Edema": "zeros"},
        frontal_only=False,
    )
    source = build_chexpert(args, data_root=tree)
    rows = {r["Path"]: r for r in rows_of(tree / "CheXpert-v1.0-small" / "train.csv")}
    seen = set()
    for record in source.records("train"):
        for finding, got in zip(args.findings, record.targets, strict=False):
            raw = rows[record.ref][finding]
            if raw == "-1.0":
                seen.add(finding)
                want = {"Atelectasis": 1.0, "Edema": 0.0, "Cardiomegaly": math.nan}[finding]
                assert (math.isnan(got) and math.isnan(want)) or got == want
    assert seen == {"Atelectasis", "Edema", "Cardiomegaly"}
    assert source.details["uncertainty"] == {"Atelectasis": "ones", "Edema": "zeros", "Cardiomegaly": "ignore"}


def test_target_value_table() -> None:
    assert target_value(1.0, "ignore", "negative") == 1.0
    assert target_value(0.0, "ones", "ignore") == 0.0
    assert target_value(-1.0, "ones", "negative") == 1.0
    assert target_value(-1.0, "zeros", "negative") == 0.0
    assert math.isnan(target_value(-1.0, "ignore", "negative"))
    assert target_value(None, "ones", "negative") == 0.0
    assert math.isnan(target_value(None, "ones", "ignore"))


def test_frontal_only_splits_and_patients(tree: Path) -> None:
    source = build_chexpert(ChexpertArgs(path=str(tree)), data_root=tree)
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 24, "test": 6}  # 12 patients x 2 frontal studies
    assert all("frontal" in str(r.ref) for r in source.records("all"))
    assert source.details["dropped"]["lateral"] == 15
    assert {r.patient_id for r in source.records("test")} == {"patient64541", "patient64542", "patient64543"}
    assert source.classes == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    assert patient_of("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg") == "patient00001"
    assert source.read(source.records("train")[0].ref, "L").size == (64, 64)
    matrix = targets_matrix(source.records("test"), 5)
    assert not np.isnan(matrix).any()  # valid.csv: 0/1 only


def test_patient_wise_val_split(tree: Path) -> None:
    source = build_chexpert(
        ChexpertArgs(path=str(tree / "CheXpert-v1.0-small"), val_size=0.25, split_seed=1), data_root=tree
    )
    assert set(source.splits) == {"train", "val", "test"}
    assert patients_in_several_splits(source.splits) == {}
    assert 3 <= len({r.patient_id for r in source.records("val")}) <= 4


def test_unlabelled_mode_for_pre_training(tree: Path) -> None:
    source = build_chexpert(ChexpertArgs(path=str(tree), labelled=False, frontal_only=False), data_root=tree)
    records = source.records("all")
    assert len(records) == 45 and all(r.targets is None and r.label == -1 for r in records)
    assert source.task == "multiclass" and source.classes == []


def test_dataset_yields_target_vectors_with_nan(tree: Path) -> None:
    source = build_chexpert(ChexpertArgs(path=str(tree), uncertainty="ignore"), data_root=tree)
    dataset = ImageDataset(source, source.records("train"), lambda image: torch.zeros(1), mode="L")
    targets = torch.stack([dataset[i][1] for i in range(len(dataset))])
    assert (
        targets.shape == (24, 5)
        and torch.isnan(targets).any()
        and ((targets == 1) | (targets == 0) | torch.isnan(targets)).all()
    )
    summary = source.summary()["splits"]["train"]["per_finding"]["Atelectasis"]
    assert summary["positive"] + summary["negative"] + summary["unknown"] == 24


def test_bad_value_names_the_line(tree: Path) -> None:
    table = tree / "CheXpert-v1.0-small" / "train.csv"
    lines = table.read_text().splitlines()
    parts = lines[3].split(",")
    parts[5 + FINDINGS.index("Edema")] = "2.0"
    lines[3] = ",".join(parts)
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=r"train\.csv: line 4: Edema is '2\.0'; CheXpert labels are 1\.0, 0\.0, -1\.0 or blank"
    ):
        build_chexpert(ChexpertArgs(path=str(tree), findings=["Edema"]), data_root=tree)


def test_missing_column_and_missing_release(tree: Path, tmp_path: Path) -> None:
    table = tree / "CheXpert-v1.0-small" / "valid.csv"
    table.write_text(table.read_text().replace(",Edema,", ",Oedema,", 1))
    with pytest.raises(DataError, match=r"valid\.csv: missing column\(s\) 'Edema' of the CheXpert header"):
        build_chexpert(ChexpertArgs(path=str(tree)), data_root=tree)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"not a CheXpert release"):
        build_chexpert(ChexpertArgs(path=str(tmp_path / "empty")), data_root=tmp_path)


def test_missing_images_follow_on_error(tree: Path) -> None:
    victim = tree / "CheXpert-v1.0-small" / "train" / "patient00003" / "study1" / "view1_frontal.jpg"
    victim.unlink()
    with pytest.raises(DataError, match=r"patient00003/study1/view1_frontal\.jpg: file not found"):
        build_chexpert(ChexpertArgs(path=str(tree)), data_root=tree)
    source = build_chexpert(ChexpertArgs(path=str(tree), on_error="skip"), data_root=tree)
    assert [s.ref for s in source.skipped] == ["CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg"]
    victim.write_bytes(b"")  # present but empty: only a decode check finds it
    with pytest.raises(DataError, match=r"view1_frontal\.jpg: file is empty"):
        build_chexpert(ChexpertArgs(path=str(tree), verify=True), data_root=tree)


def test_argument_checks() -> None:
    component = get_registry().get("dataset", "chexpert")
    with pytest.raises(Exception, match=r"unknown finding 'Edemaa'; did you mean 'Edema'"):
        component.parse_args({"path": "x", "findings": ["Edemaa"]})
    with pytest.raises(Exception, match=r"uncertainty policy given for finding\(s\) not in findings: Fracture"):
        component.parse_args({"path": "x", "uncertainty": {"Fracture": "ones"}})
    with pytest.raises(Exception, match="uncertainty"):
        component.parse_args({"path": "x", "uncertainty": "maybe"})


# ------------------------------------------------------------- multi-label probes


def test_multilabel_metrics_leave_unknown_labels_out() -> None:
    from sslmed.core.metrics import multilabel_metrics

    y = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]], dtype=float)
    proba = np.array([[0.9, 0.2], [0.1, 0.99], [0.8, 0.7], [0.3, 0.1]])
    out = multilabel_metrics(y, proba, ["A", "B"])
    assert out["auc"] == {"A": 1.0, "B": 1.0} and out["positives"] == {"A": 2, "B": 1}
    assert out["macro_auc"] == 1.0 and out["recall"] == {"A": 1.0, "B": 1.0}
    flipped = multilabel_metrics(y, 1 - proba, ["A", "B"])
    assert flipped["auc"]["A"] == 0.0
    one_class = multilabel_metrics(np.array([[1.0], [1.0]]), np.array([[0.4], [0.6]]), ["C"])
    assert math.isnan(one_class["auc"]["C"]) and math.isnan(one_class["macro_auc"])


def test_multilabel_probe_rows_on_separable_features() -> None:
    from sslmed.core.recipe import EvaluationSettings
    from sslmed.evaluation.features import FeatureSet
    from sslmed.evaluation.probes import probe_rows

    rng = np.random.default_rng(0)
    y = (rng.random((120, 3)) > 0.5).astype(float)
    x = y * 3 + rng.normal(0, 0.5, (120, 3))
    y_train = y[:80].copy()
    y_train[::7, 1] = np.nan  # unknown labels are left out of that finding's probe
    features = FeatureSet("m", x[:80], x[80:])
    rows = probe_rows(
        features, {"train": y_train, "test": y[80:]}, ["A", "B", "C"], EvaluationSettings(data="d", knn_k=5)
    ).rows
    assert [r["probe"] for r in rows] == ["linear", "knn"]
    for row in rows:
        assert set(row["auc"]) == {"A", "B", "C"} and row["macro_auc"] > 0.95


def test_multilabel_probe_folds_into_a_sigmoid_head() -> None:
    """The exported head reproduces the per-finding probe: sigmoid(x W^T + b) equals its
    probabilities, also for a finding it could only keep as a constant frequency."""
    from sslmed.core.tasks import MULTILABEL, MultiLabelProbe, multilabel_head_from_probe
    from sslmed.evaluation.probes import linear_probe

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5))
    y = np.stack([(x[:, 0] > 0), (x[:, 1] + x[:, 2] > 0), np.ones(60)], axis=1).astype(float)
    y[::5, 1] = np.nan
    probe = MultiLabelProbe(lambda: linear_probe(1.0, 0)).fit(x, y)
    weight, bias = multilabel_head_from_probe(probe, 3)
    folded = MULTILABEL.activate(torch.tensor(x, dtype=torch.float32) @ weight.T + bias).numpy()
    np.testing.assert_allclose(folded, probe.predict_proba(x), atol=1e-4)
    assert np.allclose(folded[:, 2], 1.0, atol=1e-4)  # the always-present finding


def test_run_a_recipe_on_chexpert_with_per_finding_auc(tmp_path: Path) -> None:
    from sslmed.app.runner import run_recipe

    tree = make_tree(tmp_path / "data", patients=20, valid_patients=10)
    broken = tree / "CheXpert-v1.0-small" / "train" / "patient00002" / "study1" / "view1_frontal.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    recipe = tmp_path / "chexpert.yaml"
    recipe.write_text(f"""
name: chexpert-tiny
data_root: {tree}
data:
  chexpert: {{name: chexpert, path: ., verify: true, on_error: skip, uncertainty: ones,
              findings: [Cardiomegaly, Edema, Pleural Effusion]}}
steps:
  - name: pretrain
    data: chexpert
    backbone: {{name: resnet18, small_input: true}}
    objective: {{name: simclr}}
    augmentations: [{{name: simclr}}]
    image_size: 32
    batch_size: 8
    max_steps: 2
evaluation:
  data: chexpert
  probes: [linear, knn]
  baselines: [random_init, supervised]
  knn_k: 5
""")
    result = run_recipe(recipe, runs_dir=tmp_path / "runs", progress=False)
    assert result is not None
    assert "auc Cardiomegaly" in result.table and "auc Pleural Effusion" in result.table
    assert {row["model"] for row in result.rows} == {
        "sslmed:pretrain",
        "random_init",
    }  # no supervised row for multi-label
    for row in result.rows:
        assert set(row["auc"]) == {"Cardiomegaly", "Edema", "Pleural Effusion"}
    skipped = list(csv.DictReader(open(result.run_dir / "skipped" / "chexpert.csv")))
    assert [s["path"] for s in skipped] == ["CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg"]
    assert "corrupt or truncated" in skipped[0]["reason"]
    split_rows = list(csv.DictReader(open(result.run_dir / "splits" / "chexpert.csv")))
    assert len(split_rows) == 39 + 20 and {r["split"] for r in split_rows} == {"train", "test"}

    # the multi-label run exports a model; predict applies one sigmoid per finding
    import json

    from click.testing import CliRunner

    from sslmed.app.cli import cli
    from sslmed.serving.predict import Predictor

    findings = ["Cardiomegaly", "Edema", "Pleural Effusion"]
    meta = json.loads((result.run_dir / "model" / "model.json").read_text())
    assert meta["task"] == "multilabel" and meta["activation"] == "sigmoid" and meta["classes"] == findings
    images = [tree / r["path"] for r in split_rows if r["split"] == "test"][:4]
    predicted = CliRunner().invoke(cli, ["predict", str(result.run_dir), *map(str, images)])
    assert predicted.exit_code == 0, predicted.output
    answers = json.loads(predicted.stdout)
    assert list(answers) == [str(i) for i in images]
    assert not any(a["calibrated"] for a in answers.values())  # temperature scaling: multi-class only
    by_image = {image: answer["probabilities"] for image, answer in answers.items()}
    sums = [sum(p.values()) for p in by_image.values()]
    assert all(list(p) == findings and all(0 < v < 1 for v in p.values()) for p in by_image.values())
    assert any(abs(s - 1) > 0.01 for s in sums), f"per-finding probabilities look like a softmax: sums {sums}"
    predictor = Predictor(result.run_dir, device="cpu")
    with torch.inference_mode():
        logits = predictor.model(torch.cat([predictor.model_input(predictor.load(i)) for i in images]))
    expected = torch.sigmoid(logits).numpy()
    got = np.array([[by_image[str(i)][f] for f in findings] for i in images])
    np.testing.assert_allclose(got, expected, atol=1e-5)
