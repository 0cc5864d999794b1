"""``sslmed data fetch`` offline: a loopback HTTP server serves archives laid out like each
dataset's public origin, built at test time from the real files in ../shared/data.

Nothing here reaches beyond 127.0.0.1. The server honours ``Range`` requests and can
drop the connection half-way through a file; a closed port stands for an unreachable
host; a patched write stands for a full disk.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslmed.app.cli import cli
from sslmed.core.errors import DataError
from sslmed.core.plugins import get_registry
from sslmed.data import catalog
from sslmed.data.catalog import CATALOG, MARKER
from sslmed.data.fetch import fetch_dataset
from sslmed.data.fetch.unpack import preparation
from sslmed.testing.loopback import (
    DATA,
    closed_port,
    covid3_zip,
    cxnet_zip,
    hannover_zip,
    kermany_zip,
    labels_text,
    link_shared,
    loopback_server,
    mednist_tar,
    radiography_zip,
    serve,
    shared_rows,
)

pytestmark = pytest.mark.needs_data


@pytest.fixture
def server():
    """A loopback HTTP server: ``(served, base_url)``."""
    with loopback_server() as running:
        yield running


def build(name: str, spec: dict, root: Path):
    """The dataset adapter's view of ``root/name`` (files listed, not decoded: the fetch decoded them)."""
    if spec["name"] == "csv":
        spec = {**spec, "verify": False}
    return get_registry().build("dataset", {"path": name, **spec}, data_root=root)


# ----------------------------------------------------------------------- tests


def test_fetched_hannover_is_the_shared_data(server, tmp_path: Path) -> None:
    served, base = server
    root = tmp_path / "data"
    link_shared(root, "pneumoniamnist", "covid3")  # listed before it: de-duplicated against
    result = fetch_dataset(
        "covid_extra_hannover", root, quiet=True, catalog=serve(served, base, "covid_extra_hannover", hannover_zip())
    )
    assert result.status == "fetched" and result.images == 243 and result.removed == 0
    folder = root / "covid_extra_hannover"
    assert (folder / "labels.csv").read_text() == (DATA / "covid_extra_hannover" / "labels.csv").read_text()
    spec = {"name": "csv", "patient_column": "patient_id", "test_size": 0.2, "val_size": 0.1}
    fetched, shared = build("covid_extra_hannover", spec, root), build("covid_extra_hannover", spec, DATA)
    assert fetched.summary() == shared.summary()  # image count, classes, splits, patients
    assert fetched.fingerprint() == shared.fingerprint()
    assert catalog.content_digest("covid_extra_hannover", root) == catalog.content_digest("covid_extra_hannover", DATA)
    record = json.loads((folder / MARKER).read_text())
    assert record["files"][0]["url"].startswith("http://127.0.0.1:")
    assert record["files"][0]["md5"] == hashlib.md5(served.files["/" + record["files"][0]["filename"]]).hexdigest()
    assert not list(root.glob(".*partial*"))


def test_fetched_not_cxr_and_pneumoniamnist_are_the_shared_data(server, tmp_path: Path) -> None:
    served, base = server
    root = tmp_path / "data"
    npz = (DATA / "pneumoniamnist" / "pneumoniamnist.npz").read_bytes()
    fetch_dataset("pneumoniamnist", root, quiet=True, catalog=serve(served, base, "pneumoniamnist", npz))
    assert (root / "pneumoniamnist" / "pneumoniamnist.npz").read_bytes() == npz
    link_shared(root, "covid_extra_hannover")  # listed before it: de-duplicated against
    result = fetch_dataset("not_cxr", root, quiet=True, catalog=serve(served, base, "not_cxr", mednist_tar()))
    assert result.images == 500 and result.removed == 0
    for name, spec in (
        ("not_cxr", {"name": "csv", "test_size": 0.2, "val_size": 0.1}),
        ("pneumoniamnist/pneumoniamnist.npz", {"name": "medmnist_npz", "classes": ["normal", "pneumonia"]}),
    ):
        fetched, shared = build(name, spec, root), build(name, spec, DATA)
        assert fetched.summary() == shared.summary()
        assert fetched.fingerprint() == shared.fingerprint()
    assert (root / "not_cxr" / "labels.csv").read_text() == (DATA / "not_cxr" / "labels.csv").read_text()


@pytest.mark.slow
def test_fetched_covid3_is_the_shared_data(server, tmp_path: Path) -> None:
    served, base = server
    root = tmp_path / "data"
    link_shared(root, "pneumoniamnist")
    result = fetch_dataset("covid3", root, quiet=True, catalog=serve(served, base, "covid3", covid3_zip(), pin=False))
    assert result.images == 1123 and result.removed == 0
    assert (root / "covid3" / "labels.csv").read_text() == (DATA / "covid3" / "labels.csv").read_text()
    spec = {"name": "csv", "patient_column": "patient_id", "test_size": 0.2, "val_size": 0.1}
    assert build("covid3", spec, root).fingerprint() == build("covid3", spec, DATA).fingerprint()
    record = json.loads((root / "covid3" / MARKER).read_text())
    assert record["files"][0]["pinned"] is False and len(record["files"][0]["sha256"]) == 64


def test_duplicates_of_earlier_sets_are_left_out(server, tmp_path: Path) -> None:
    """An archive that also holds images of covid3 (listed earlier) loses exactly those."""
    served, base = server
    root = tmp_path / "data"
    link_shared(root, "covid3")
    buffer = io.BytesIO(hannover_zip())
    extra = sorted((DATA / "covid3" / "images" / "No_findings").iterdir())[:3]
    with zipfile.ZipFile(buffer, "a") as archive:
        for i, file in enumerate(extra):
            archive.write(file, f"covid-19-image-repository-x/png/dup{i}.png")
        data_csv = next(n for n in archive.namelist() if n.endswith("data.csv"))
        table = archive.read(data_csv).decode() + "".join(f"zz{i},dup{i},m,CR,pa\n" for i in range(3))
    rebuilt = io.BytesIO()
    with zipfile.ZipFile(buffer) as old, zipfile.ZipFile(rebuilt, "w") as new:
        for info in old.infolist():
            if info.filename != data_csv:
                new.writestr(info, old.read(info))
        new.writestr(data_csv, table)
    catalog_ = serve(served, base, "covid_extra_hannover", rebuilt.getvalue())
    result = fetch_dataset("covid_extra_hannover", root, quiet=True, catalog=catalog_)
    assert result.images == 243 and result.removed == 3
    record = json.loads((root / "covid_extra_hannover" / MARKER).read_text())
    assert {d["path"] for d in record["duplicates_removed"]} == {"dup0.png", "dup1.png", "dup2.png"}
    assert all("covid3" in d["reason"] for d in record["duplicates_removed"])


def test_checksum_mismatch_is_refused_and_nothing_is_left(server, tmp_path: Path) -> None:
    served, base = server
    root = tmp_path / "data"
    catalog_ = serve(served, base, "not_cxr", mednist_tar())
    entry = catalog_["not_cxr"]
    wrong = {**catalog_, "not_cxr": replace(entry, downloads=(replace(entry.downloads[0], md5="0" * 32),))}
    with pytest.raises(DataError, match=r"md5 checksum mismatch \(expected 0{32}, got [0-9a-f]{32}"):
        fetch_dataset("not_cxr", root, quiet=True, catalog=wrong)
    assert not (root / "not_cxr").exists()
    assert not list((root / ".downloads").iterdir())  # the bad file is removed, not kept as if whole


def test_interrupted_download_resumes_with_range(server, tmp_path: Path) -> None:
    served, base = server
    root = tmp_path / "data"
    catalog_ = serve(served, base, "not_cxr", mednist_tar())
    path = "/" + catalog_["not_cxr"].downloads[0].filename
    served.drop_once.add(path)
    result = fetch_dataset("not_cxr", root, quiet=True, catalog=catalog_)
    assert result.images == 500
    half = len(served.files[path]) // 2
    assert served.requests == [(path, None), (path, f"bytes={half}-")]  # the retry asked for the rest only


def test_interrupted_fetch_leaves_no_dataset_and_the_next_one_resumes(server, tmp_path: Path) -> None:
    served, base = server
    root = tmp_path / "data"
    catalog_ = serve(served, base, "not_cxr", mednist_tar())
    path = "/" + catalog_["not_cxr"].downloads[0].filename
    served.drop_once.add(path)
    with pytest.raises(DataError, match="the next fetch resumes from there"):
        fetch_dataset("not_cxr", root, quiet=True, retries=0, catalog=catalog_)
    assert not (root / "not_cxr").exists() and not catalog.is_present("not_cxr", root)
    assert (root / ".downloads" / (path[1:] + ".part")).stat().st_size == len(served.files[path]) // 2
    fetch_dataset("not_cxr", root, quiet=True, retries=0, catalog=catalog_)
    assert served.requests[-1] == (path, f"bytes={len(served.files[path]) // 2}-")
    assert catalog.is_present("not_cxr", root)


def test_full_disk_gives_a_clear_error_and_no_partial_dataset(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, base = server
    root = tmp_path / "data"
    catalog_ = serve(served, base, "not_cxr", mednist_tar())
    real_open, written = open, []

    def filling_open(file, mode="r", *args, **kwargs):  # the 40th prepared image finds the disk full
        if "w" in mode and ".not_cxr.partial-" in str(file):
            written.append(file)
            if len(written) >= 40:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", filling_open)
    with pytest.raises(DataError, match=r"no space left on the device while writing .*\.not_cxr\.partial-"):
        fetch_dataset("not_cxr", root, quiet=True, catalog=catalog_)
    monkeypatch.undo()
    assert not (root / "not_cxr").exists()
    assert not [p for p in root.iterdir() if "partial" in p.name]  # the temporary folder is gone too


def test_cli_unreachable_host_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = CATALOG["not_cxr"]
    url = f"http://127.0.0.1:{closed_port()}/MedNIST.tar.gz"
    monkeypatch.setitem(CATALOG, "not_cxr", replace(entry, downloads=(replace(entry.downloads[0], url=url),)))
    result = CliRunner().invoke(cli, ["data", "fetch", "not_cxr", "--root", str(tmp_path), "-q"])
    assert result.exit_code == 1
    assert "Error: cannot reach the server for http://127.0.0.1:" in result.output
    assert "Connection refused" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "not_cxr").exists()
    # `make run` offline: warn, exit 0, and let `sslmed run` say what is missing
    result = CliRunner().invoke(cli, ["data", "fetch", "not_cxr", "--root", str(tmp_path), "-q", "--skip-unreachable"])
    assert result.exit_code == 0 and "not_cxr: skipped, cannot reach the server" in result.output


def test_cli_fetch_and_list(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served, base = server
    for name, key in (("not_cxr", "not_cxr"),):
        monkeypatch.setitem(CATALOG, key, serve(served, base, name, mednist_tar())[name])
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "fetch", "not_cxr", "--root", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert f"not_cxr: 500 images -> {tmp_path / 'not_cxr'}" in result.output
    again = runner.invoke(cli, ["data", "fetch", "not_cxr", "--root", str(tmp_path), "-q"])
    assert again.exit_code == 0 and "not_cxr: present" in again.output and len(served.requests) == 1
    listed = runner.invoke(cli, ["data", "list", "--root", str(tmp_path), "--json"])
    status = {d["name"]: d["status"] for d in json.loads(listed.stdout)}
    assert status["not_cxr"].startswith("fetched ") and status["covid3"] == "missing"
    unknown = runner.invoke(cli, ["data", "fetch", "nope", "--root", str(tmp_path)])
    assert unknown.exit_code == 2 and "no dataset 'nope' in the catalogue (datasets: pneumoniamnist" in unknown.output


def test_cli_fetch_recipe_gets_what_it_reads_into_its_data_root(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, base = server
    monkeypatch.setitem(CATALOG, "not_cxr", serve(served, base, "not_cxr", mednist_tar())["not_cxr"])
    recipe = tmp_path / "ood.yaml"
    recipe.write_text(
        "name: ood\ndata_root: data\n"  # relative: from the recipe's folder
        "data:\n  ood: {name: csv, path: not_cxr}\n  unused: {name: csv, path: covid3}\n"
        "steps:\n  - {name: s, data: ood, backbone: {name: resnet18}, objective: {name: simclr},"
        " augmentations: [{name: simclr}]}\n"
    )
    result = CliRunner().invoke(cli, ["data", "fetch", "--recipe", str(recipe), "-q"])
    assert result.exit_code == 0, result.output
    assert catalog.is_present("not_cxr", tmp_path / "data") and not (tmp_path / "data" / "covid3").exists()


def test_run_on_missing_data_names_the_datasets_and_the_command(tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["validate", str(recipe), "--set", f"data_root={empty}"])
    assert result.exit_code == 1
    assert (
        f"dataset(s) covid3, covid_extra_hannover, covid_extra_cxnet, cxr_corpus, kermany not in the data "
        f"root {empty}: fetch them with `sslmed data fetch covid3 covid_extra_hannover covid_extra_cxnet "
        f"cxr_corpus kermany --root {empty}`" in result.output
    )


def test_catalogue_covers_every_dataset_the_recipes_read() -> None:
    from sslmed.app.prepare import load_recipe_file

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    read = set()
    for path in recipes.glob("[!_]*.yaml"):
        loaded, _ = load_recipe_file(path)
        read |= set(catalog.datasets_for_recipe(loaded))
    assert read == {"pneumoniamnist", "covid3", "covid_extra_hannover", "covid_extra_cxnet", "cxr_corpus", "kermany"}
    for entry in CATALOG.values():
        assert entry.licence and entry.citation and entry.source.startswith("https://")
        for item in entry.downloads:
            assert item.pinned or item.manual or "unpinned" in entry.note or "checksum unpinned" in entry.note
        assert callable(preparation(entry))  # each entry names its own preparation
    with pytest.raises(DataError, match="no preparation"):
        preparation(replace(CATALOG["covid3"], prepare="load_image"))


def test_manifest_says_which_copy_a_run_used(server, tmp_path: Path) -> None:
    from sslmed.app.prepare import load_recipe_file

    served, base = server
    root = tmp_path / "data"
    fetch_dataset(
        "pneumoniamnist",
        root,
        quiet=True,
        catalog=serve(served, base, "pneumoniamnist", (DATA / "pneumoniamnist" / "pneumoniamnist.npz").read_bytes()),
    )
    link_shared(root, "covid3")
    recipe, _ = load_recipe_file(Path(__file__).resolve().parents[2] / "recipes" / "crsm_transfer.yaml")
    copies = catalog.data_copies(recipe.model_copy(update={"data_root": str(root)}))
    assert copies["data_root"] == str(root)
    assert copies["datasets"]["pneumoniamnist"]["origin"] == "fetched by sslmed data fetch"
    assert copies["datasets"]["pneumoniamnist"]["files"][0]["url"].startswith(base)
    assert copies["datasets"]["covid3"]["origin"] == "not fetched by sslmed (no fetch record)"
    # the same bytes, wherever they came from: the fetched PneumoniaMNIST is the shared one
    assert copies["datasets"]["pneumoniamnist"]["content"] == catalog.content_digest("pneumoniamnist", DATA)
    assert copies["datasets"]["covid3"]["content"] != copies["datasets"]["pneumoniamnist"]["content"]


# ------------------------------------------- the other origins, on real subsets


def _subset(name: str, per_group: int, group) -> list[dict[str, str]]:
    """The first ``per_group`` rows of each group of the shared labels.csv (its order kept)."""
    taken: dict[str, int] = {}
    rows = []
    for row in shared_rows(name):
        key = group(row)
        if taken.get(key, 0) < per_group:
            taken[key] = taken.get(key, 0) + 1
            rows.append(row)
    return rows


def test_kermany_from_its_release_layout(server, tmp_path: Path) -> None:
    """ChestXRay2017.zip's layout (chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}): file names give
    patient and pneumonia type; val is left out."""
    served, base = server
    rows = _subset("kermany", 6, lambda r: f"{r['split']}/{r['label']}/{r['pneumonia_type']}")
    odd = ("train/NORMAL/IM-0429-0001-0002.jpeg", "train/PNEUMONIA/person447_virus_921_1.jpeg")  # file names
    rows += [r for r in shared_rows("kermany") if r["path"] in odd]  # whose patient is not the last number off
    rows.sort(key=lambda r: (r["split"] != "train", r["path"]))
    root = tmp_path / "data"
    result = fetch_dataset(
        "kermany", root, quiet=True, catalog=serve(served, base, "kermany", kermany_zip(rows), images=len(rows))
    )
    assert result.images == len(rows) and result.removed == 0
    assert (root / "kermany" / "labels.csv").read_text() == labels_text(rows)


def test_cxr_corpus_needs_the_kaggle_file_and_then_prepares_it(server, tmp_path: Path) -> None:
    """The radiography part comes from a file downloaded by hand (Kaggle); MedNIST's CXR class downloads."""
    served, base = server
    rows = _subset("cxr_corpus", 5, lambda r: r["path"].split("/")[1] if r["source"] != "mednist_nih" else "mednist")
    radiography = [r for r in rows if r["source"] != "mednist_nih"]
    mednist = [r for r in rows if r["source"] == "mednist_nih"]
    catalog_ = serve(served, base, "cxr_corpus", mednist_tar(not_cxr=[], cxr=mednist), pin=False, images=len(rows))
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"must be downloaded by hand: .*kaggle\.com/datasets/tawsifurrahman"):
        fetch_dataset("cxr_corpus", root, quiet=True, catalog=catalog_)
    assert not (root / "cxr_corpus").exists() and not served.requests  # nothing downloaded before it is all there
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    (kaggle / CATALOG["cxr_corpus"].downloads[0].filename).write_bytes(radiography_zip(radiography))
    result = fetch_dataset("cxr_corpus", root, quiet=True, search=[kaggle], catalog=catalog_)
    assert result.images == len(rows)
    assert (root / "cxr_corpus" / "labels.csv").read_text() == labels_text(rows)


def test_cxnet_from_its_repository_layout(server, tmp_path: Path) -> None:
    """COVID-CXNet's chest_xray_images/covid19/ (mixed formats) and metadata.csv (patient, age)."""
    served, base = server
    everything = shared_rows("covid_extra_cxnet")
    picked = [r for r in everything if r["patient_id"]][:6] + everything[:4]
    picked += [r for r in everything if r["pediatric_flag"] == "1"][:2]
    picked += [r for r in everything if r["path"] == "covid19/280-.png"]  # the repository's name, dash included
    rows = sorted({r["path"]: r for r in picked}.values(), key=lambda r: r["path"])
    commit = "0123456789abcdef0123456789abcdef01234567"
    body = cxnet_zip(rows, jpeg_every_other=True, commit=commit)
    root = tmp_path / "data"
    catalog_ = serve(served, base, "covid_extra_cxnet", body, pin=False, images=len(rows))
    result = fetch_dataset("covid_extra_cxnet", root, quiet=True, catalog=catalog_)
    assert result.images == len(rows)
    assert (root / "covid_extra_cxnet" / "labels.csv").read_text() == labels_text(rows)
    record = json.loads((root / "covid_extra_cxnet" / MARKER).read_text())
    assert record["files"][0]["commit"] == commit


def test_a_wrong_archive_is_named_and_leaves_nothing(server, tmp_path: Path) -> None:
    served, base = server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("something-else/README.md", "not the DarkCovidNet repository")
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"no images in class folder\(s\) Covid-19, No_findings, Pneumonia"):
        fetch_dataset("covid3", root, quiet=True, catalog=serve(served, base, "covid3", buffer.getvalue(), pin=False))
    assert sorted(p.name for p in root.iterdir()) == [".downloads"]


def test_an_archive_with_far_fewer_images_than_the_catalogue_is_refused(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 (5): a DarkCovidNet archive with 6 images, where the catalogue says 1,123,
    was accepted as a complete covid3."""
    served, base = server
    rows = _subset("covid3", 2, lambda r: r["label"])  # 2 per class: 6 images
    monkeypatch.setitem(CATALOG, "covid3", serve(served, base, "covid3", covid3_zip(rows), pin=False)["covid3"])
    root = tmp_path / "data"
    result = CliRunner().invoke(cli, ["data", "fetch", "covid3", "--root", str(root), "-q"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "covid3: the prepared copy holds 6 images, the catalogue expects 1,123" in errors[0]
    assert not (root / "covid3").exists() and not catalog.is_present("covid3", root)
    assert sorted(p.name for p in root.iterdir()) == [".downloads"]  # no partial folder either
    assert not list((root / ".downloads").iterdir()), "the unpinned archive is removed: the next fetch gets a new one"


def test_leftovers_of_a_killed_fetch_are_cleaned_but_not_a_running_one(tmp_path: Path) -> None:
    import os
    import time

    from sslmed.data.fetch import clean_partials

    stale, running = tmp_path / ".not_cxr.partial-old", tmp_path / ".not_cxr.partial-new"
    for folder in (stale, running):
        (folder / "images").mkdir(parents=True)
    an_hour_ago = time.time() - 7200
    os.utime(stale, (an_hour_ago, an_hour_ago))
    assert clean_partials(tmp_path, "not_cxr") == [stale]
    assert running.is_dir() and not stale.exists()
