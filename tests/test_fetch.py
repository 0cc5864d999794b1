"""``sslmed data fetch`` offline: a loopback HTTP server serves archives laid out like each
dataset's public origin, built at test time from the real files in ../shared/data.

Nothing here reaches beyond 127.0.0.1. The server honours ``Range`` requests and can
drop the connection half-way through a file; a closed port stands for an unreachable
host; a patched write stands for a full disk.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslmed import catalog
from sslmed.catalog import CATALOG, MARKER
from sslmed.cli import cli
from sslmed.errors import DataError
from sslmed.fetch import fetch_dataset
from sslmed.plugins import extend_cli, get_registry

DATA = Path(os.environ.get("SSLMED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
pytestmark = pytest.mark.skipif(
    not (DATA / "covid_extra_hannover" / "labels.csv").is_file(),
    reason=f"real data not found at {DATA} (see ../shared/data/README.md)",
)


# ------------------------------------------------------------- loopback server


@dataclass
class Served:
    """What the loopback server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_once: set[str] = field(default_factory=set)  # paths whose first full response stops half-way
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?")[0]
            served.requests.append((path, self.headers.get("Range")))
            body = served.files.get(path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if self.headers.get("Range", "").startswith("bytes="):
                start = int(self.headers["Range"][6:].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if start == 0 and path in served.drop_once:
                served.drop_once.discard(path)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return  # the connection closes with half the promised bytes sent
            self.wfile.write(body[start:])

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[Served, str]]:
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


# ------------------------------------------- archives in each origin's layout


def _rows(name: str) -> list[dict[str, str]]:
    with open(DATA / name / "labels.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def hannover_zip() -> bytes:
    """The covid-19-image-repository layout: data.csv + png/<image_id>.png, under a GitHub top folder."""
    top = "covid-19-image-repository-4025ea15f2987f03cf368a893f37121b7a43bd87"
    rows = _rows("covid_extra_hannover")
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["patient_id", "image_id", "sex", "modality", "projection"])
    for row in rows:
        writer.writerow([row["patient_id"], Path(row["path"]).stem, "m", row["modality"], row["projection"]])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{top}/data.csv", table.getvalue())
        archive.writestr(f"{top}/README.md", "COVID-19 image repository\n")
        for row in rows:
            archive.write(DATA / "covid_extra_hannover" / "images" / row["path"], f"{top}/png/{row['path']}")
    return buffer.getvalue()


def mednist_tar() -> bytes:
    """MedNIST.tar.gz's layout (MedNIST/<Class>/<NNNNNN>.jpeg) with the not_cxr images."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for row in _rows("not_cxr"):
            archive.add(DATA / "not_cxr" / "images" / row["path"], f"MedNIST/{row['path']}")
    return buffer.getvalue()


def covid3_zip() -> bytes:
    """The DarkCovidNet repository's layout: Dataset/<Class>/<file>, under a GitHub top folder."""
    top = "COVID-19-da7714c5dded0bd56bfb9f12dae6cd11bf802025"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for row in _rows("covid3"):
            archive.write(DATA / "covid3" / "images" / row["path"], f"{top}/Dataset/{row['path']}")
    return buffer.getvalue()


def serve(served: Served, base: str, name: str, body: bytes, *, pin: bool = True) -> dict[str, catalog.CatalogEntry]:
    """A catalogue whose entry ``name`` downloads ``body`` from the loopback server."""
    entry = CATALOG[name]
    item = entry.downloads[0]
    path = f"/{item.filename}"
    served.files[path] = body
    md5 = hashlib.md5(body).hexdigest() if pin else None
    return {**CATALOG, name: replace(entry, downloads=(replace(item, url=base + path, md5=md5),))}


def link_shared(root: Path, *names: str) -> None:
    """Put the shared copies of ``names`` into ``root`` (the sets a fetch de-duplicates against)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).symlink_to(DATA / name, target_is_directory=True)


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
    extend_cli(cli)
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
    extend_cli(cli)
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


def test_run_on_missing_data_names_the_datasets_and_the_command(tmp_path: Path) -> None:
    extend_cli(cli)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["validate", str(recipe), "--set", f"data_root={empty}"])
    assert result.exit_code == 1
    assert (
        f"dataset(s) pneumoniamnist, covid3 not in the data root {empty}: fetch them with "
        f"`sslmed data fetch pneumoniamnist covid3 --root {empty}`" in result.output
    )


def test_catalogue_covers_every_dataset_the_recipes_read() -> None:
    from sslmed.runner import load_recipe_file

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    read = set()
    for path in recipes.glob("[!_]*.yaml"):
        loaded, _ = load_recipe_file(path)
        read |= set(catalog.datasets_for_recipe(loaded))
    assert read == {"pneumoniamnist", "covid3", "covid_extra_hannover", "covid_extra_cxnet"}
    for entry in CATALOG.values():
        assert entry.licence and entry.citation and entry.source.startswith("https://")
        for item in entry.downloads:
            assert item.pinned or item.manual or "unpinned" in entry.note or "checksum unpinned" in entry.note


def test_manifest_says_which_copy_a_run_used(server, tmp_path: Path) -> None:
    from sslmed.runner import load_recipe_file

    served, base = server
    root = tmp_path / "data"
    fetch_dataset(
        "pneumoniamnist",
        root,
        quiet=True,
        catalog=serve(served, base, "pneumoniamnist", (DATA / "pneumoniamnist" / "pneumoniamnist.npz").read_bytes()),
    )
    link_shared(root, "covid3")
    recipe, _ = load_recipe_file(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml")
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
    for row in _rows(name):
        key = group(row)
        if taken.get(key, 0) < per_group:
            taken[key] = taken.get(key, 0) + 1
            rows.append(row)
    return rows


def _labels(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def test_kermany_from_its_release_layout(server, tmp_path: Path) -> None:
    """ChestXRay2017.zip's layout (chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}): file names give
    patient and pneumonia type; val is left out."""
    served, base = server
    rows = _subset("kermany", 6, lambda r: f"{r['split']}/{r['label']}/{r['pneumonia_type']}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for row in rows:
            archive.write(DATA / "kermany" / "images" / row["path"], f"chest_xray/{row['path']}")
        archive.write(DATA / "kermany" / "images" / rows[0]["path"], "chest_xray/val/NORMAL/NORMAL2-IM-1427-0001.jpeg")
        archive.writestr("__MACOSX/chest_xray/._train", b"resource fork")
    root = tmp_path / "data"
    result = fetch_dataset("kermany", root, quiet=True, catalog=serve(served, base, "kermany", buffer.getvalue()))
    assert result.images == len(rows) and result.removed == 0
    assert (root / "kermany" / "labels.csv").read_text() == _labels(rows)


def test_cxr_corpus_needs_the_kaggle_file_and_then_prepares_it(server, tmp_path: Path) -> None:
    """The radiography part comes from a file downloaded by hand (Kaggle); MedNIST's CXR class downloads."""
    served, base = server
    rows = _subset("cxr_corpus", 5, lambda r: r["path"].split("/")[1] if r["source"] != "mednist_nih" else "mednist")
    mednist = io.BytesIO()
    with tarfile.open(fileobj=mednist, mode="w:gz") as archive:
        for row in rows:
            if row["source"] == "mednist_nih":
                archive.add(DATA / "cxr_corpus" / "images" / row["path"], f"MedNIST/CXR/{Path(row['path']).name}")
    entry = CATALOG["cxr_corpus"]
    radiography, mednist_item = entry.downloads
    served.files["/MedNIST.tar.gz"] = mednist.getvalue()
    catalog_ = {
        **CATALOG,
        "cxr_corpus": replace(
            entry, downloads=(radiography, replace(mednist_item, url=base + "/MedNIST.tar.gz", md5=None))
        ),
    }
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"must be downloaded by hand: .*kaggle\.com/datasets/tawsifurrahman"):
        fetch_dataset("cxr_corpus", root, quiet=True, catalog=catalog_)
    assert not (root / "cxr_corpus").exists() and not served.requests  # nothing downloaded before it is all there
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    with zipfile.ZipFile(kaggle / radiography.filename, "w") as archive:  # the database's own layout
        for row in rows:
            if row["source"] != "mednist_nih":
                label, name = row["label"], Path(row["path"]).stem
                archive.write(
                    DATA / "cxr_corpus" / "images" / row["path"],
                    f"COVID-19_Radiography_Dataset/{label}/images/{name}.png",
                )
        archive.writestr(f"COVID-19_Radiography_Dataset/COVID/masks/{name}.png", b"a lung mask, not an image to keep")
        archive.writestr("COVID-19_Radiography_Dataset/Lung_Opacity/images/Lung_Opacity-1.png", b"not taken")
    result = fetch_dataset("cxr_corpus", root, quiet=True, search=[kaggle], catalog=catalog_)
    assert result.images == len(rows)
    assert (root / "cxr_corpus" / "labels.csv").read_text() == _labels(rows)


def test_cxnet_from_its_repository_layout(server, tmp_path: Path) -> None:
    """COVID-CXNet's chest_xray_images/covid19/ (mixed formats) and metadata.csv (patient, age)."""
    served, base = server
    rows = [r for r in _rows("covid_extra_cxnet") if r["patient_id"]][:6] + _rows("covid_extra_cxnet")[:4]
    rows = sorted({r["path"]: r for r in rows}.values(), key=lambda r: r["path"])
    rows += [r for r in _rows("covid_extra_cxnet") if r["pediatric_flag"] == "1"][:2]
    rows = sorted({r["path"]: r for r in rows}.values(), key=lambda r: r["path"])
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["filename", "patient_id", "sex", "age", "label"])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, row in enumerate(rows):
            stem = Path(row["path"]).stem
            source = DATA / "covid_extra_cxnet" / "images" / row["path"]
            if i % 2:  # as in the repository: JPEGs among the PNGs, converted on the way
                jpeg = io.BytesIO()
                from PIL import Image

                Image.open(source).convert("RGB").save(jpeg, format="JPEG", quality=95)
                archive.writestr(f"COVID-CXNet-master/chest_xray_images/covid19/{stem}.jpg", jpeg.getvalue())
            else:
                archive.write(source, f"COVID-CXNet-master/chest_xray_images/covid19/{stem}.png")
            if row["patient_id"]:
                age = "9" if row["pediatric_flag"] == "1" else "54"
                writer.writerow([f"{stem}.jpg", row["patient_id"], "male", age, "COVID-19"])
        archive.writestr("COVID-CXNet-master/metadata.csv", table.getvalue())
        archive.comment = b"0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "data"
    catalog_ = serve(served, base, "covid_extra_cxnet", buffer.getvalue(), pin=False)
    result = fetch_dataset("covid_extra_cxnet", root, quiet=True, catalog=catalog_)
    assert result.images == len(rows)
    assert (root / "covid_extra_cxnet" / "labels.csv").read_text() == _labels(rows)
    record = json.loads((root / "covid_extra_cxnet" / MARKER).read_text())
    assert record["files"][0]["commit"] == "0123456789abcdef0123456789abcdef01234567"


def test_a_wrong_archive_is_named_and_leaves_nothing(server, tmp_path: Path) -> None:
    served, base = server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("something-else/README.md", "not the DarkCovidNet repository")
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"no images in class folder\(s\) Covid-19, No_findings, Pneumonia"):
        fetch_dataset("covid3", root, quiet=True, catalog=serve(served, base, "covid3", buffer.getvalue(), pin=False))
    assert sorted(p.name for p in root.iterdir()) == [".downloads"]
