"""Helpers for the fetch tests and ``bench/fetch_roundtrip.py``: a loopback HTTP server and
archives laid out like each dataset's public origin, built from the real files in
../shared/data.

The server listens on 127.0.0.1 only, honours ``Range`` requests and can drop the
connection half-way through a file. Each archive builder takes the shared copy's
``labels.csv`` rows (all, or a subset) and lays the files out as the origin does.
"""

from __future__ import annotations

import csv
import hashlib
import io
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from sslmed.data.catalog import CATALOG, CatalogEntry
from sslmed.data.roots import resolve_data_root

DATA = resolve_data_root()

Rows = list[dict[str, str]]


# ------------------------------------------------------------- loopback server


@dataclass
class Served:
    """What the loopback server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_once: set[str] = field(default_factory=set)  # paths whose first full response stops half-way
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    no_length: set[str] = field(default_factory=set)  # paths answered without Content-Length
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> headers sent instead
    drip: dict[str, float] = field(default_factory=dict)  # path -> seconds between bytes sent
    refuse_range: set[str] = field(default_factory=set)  # paths answering a Range with 416


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
            if path in served.refuse_range and self.headers.get("Range"):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.headers.get("Range", "").startswith("bytes="):
                start = int(self.headers["Range"][6:].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            for name, value in served.headers.get(path, {"Content-Length": str(len(body) - start)}).items():
                if path not in served.no_length:
                    self.send_header(name, value)
            self.end_headers()
            if path in served.no_length:
                self.close_connection = True  # the body ends when the connection does
            if path in served.drip:
                for index in range(start, len(body)):
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
                    time.sleep(served.drip[path])
                return
            if start == 0 and path in served.drop_once:
                served.drop_once.discard(path)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return  # the connection closes with half the promised bytes sent
            self.wfile.write(body[start:])

    return Handler


@contextmanager
def loopback_server() -> Iterator[tuple[Served, str]]:
    """``(served, base_url)`` of a server on 127.0.0.1, stopped when the block ends."""
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
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------- archives in each origin's layout


def shared_rows(name: str) -> Rows:
    """The rows of the shared copy's ``labels.csv``."""
    with open(DATA / name / "labels.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def labels_text(rows: Rows) -> str:
    """``rows`` as the fetch writes ``labels.csv``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _zip(entries: dict[str, Path | bytes | str], comment: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            if isinstance(content, Path):
                archive.write(content, name)
            else:
                archive.writestr(name, content)
        archive.comment = comment
    return buffer.getvalue()


def hannover_zip(rows: Rows | None = None) -> bytes:
    """covid-19-image-repository: data.csv + png/<image_id>.png, under a GitHub top folder."""
    rows = rows if rows is not None else shared_rows("covid_extra_hannover")
    top = "covid-19-image-repository-master"
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["patient_id", "image_id", "sex", "modality", "projection"])
    for row in rows:
        writer.writerow([row["patient_id"], Path(row["path"]).stem, "m", row["modality"], row["projection"]])
    files: dict[str, Path | bytes | str] = {f"{top}/data.csv": table.getvalue(), f"{top}/README.md": "repository\n"}
    for row in rows:
        files[f"{top}/png/{row['path']}"] = DATA / "covid_extra_hannover" / "images" / row["path"]
    return _zip(files)


def covid3_zip(rows: Rows | None = None) -> bytes:
    """The DarkCovidNet repository: Dataset/<Class>/<file>, under a GitHub top folder."""
    rows = rows if rows is not None else shared_rows("covid3")
    top = "COVID-19-da7714c5dded0bd56bfb9f12dae6cd11bf802025"
    return _zip({f"{top}/Dataset/{r['path']}": DATA / "covid3" / "images" / r["path"] for r in rows})


def cxnet_zip(rows: Rows | None = None, jpeg_every_other: bool = False, commit: str = "") -> bytes:
    """COVID-CXNet: chest_xray_images/covid19/<n>.<ext> and metadata.csv (patient, age: under 18
    for the shared copy's pediatric_flag 1)."""
    rows = rows if rows is not None else shared_rows("covid_extra_cxnet")
    top = "COVID-CXNet-master"
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["filename", "patient_id", "sex", "age", "label"])
    files: dict[str, Path | bytes | str] = {}
    for i, row in enumerate(rows):
        stem, source = Path(row["path"]).stem, DATA / "covid_extra_cxnet" / "images" / row["path"]
        if jpeg_every_other and i % 2:  # as in the repository: JPEGs among the PNGs
            jpeg = io.BytesIO()
            Image.open(source).convert("RGB").save(jpeg, format="JPEG", quality=95)
            files[f"{top}/chest_xray_images/covid19/{stem}.jpg"] = jpeg.getvalue()
        else:
            files[f"{top}/chest_xray_images/covid19/{stem}.png"] = source
        if row["patient_id"]:
            age = "9" if row["pediatric_flag"] == "1" else "54"
            writer.writerow([f"{stem}.jpg", row["patient_id"], "male", age, "COVID-19"])
    files[f"{top}/metadata.csv"] = table.getvalue()
    return _zip(files, comment=commit.encode())


def mednist_tar(not_cxr: Rows | None = None, cxr: Rows | None = None) -> bytes:
    """MedNIST.tar.gz: MedNIST/<Class>/<NNNNNN>.jpeg, with the not_cxr images and, as class CXR,
    cxr_corpus's mednist_cxr images."""
    not_cxr = not_cxr if not_cxr is not None else shared_rows("not_cxr")
    cxr = cxr if cxr is not None else []
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for row in not_cxr:
            archive.add(DATA / "not_cxr" / "images" / row["path"], f"MedNIST/{row['path']}")
        for row in cxr:
            archive.add(DATA / "cxr_corpus" / "images" / row["path"], f"MedNIST/CXR/{Path(row['path']).name}")
    return buffer.getvalue()


def radiography_zip(rows: Rows) -> bytes:
    """The COVID-19 Radiography Database (Kaggle): <Class>/images/<Class>-<n>.png, plus masks."""
    top = "COVID-19_Radiography_Dataset"
    files: dict[str, Path | bytes | str] = {}
    for row in rows:
        name = Path(row["path"]).stem
        files[f"{top}/{row['label']}/images/{name}.png"] = DATA / "cxr_corpus" / "images" / row["path"]
    files[f"{top}/COVID/masks/COVID-1.png"] = b"a lung mask, not an image to keep"
    files[f"{top}/Lung_Opacity/images/Lung_Opacity-1.png"] = b"a class the corpus does not take"
    return _zip(files)


def kermany_zip(rows: Rows | None = None) -> bytes:
    """ChestXRay2017.zip: chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/<file>, with macOS leftovers."""
    rows = rows if rows is not None else shared_rows("kermany")
    files: dict[str, Path | bytes | str] = {
        f"chest_xray/{r['path']}": DATA / "kermany" / "images" / r["path"] for r in rows
    }
    files["chest_xray/val/NORMAL/NORMAL2-IM-1427-0001.jpeg"] = DATA / "kermany" / "images" / rows[0]["path"]
    files["__MACOSX/chest_xray/._train"] = b"resource fork"
    return _zip(files)


def serve(
    served: Served, base: str, name: str, *bodies: bytes, pin: bool = True, images: int | None = None
) -> dict[str, CatalogEntry]:
    """A catalogue whose entry ``name`` downloads ``bodies`` (one per download that is not
    by hand, in order) from the loopback server; ``pin``: with their md5. ``images``: the
    entry's image count, for an archive holding a subset of the dataset (a fetch holding
    fewer than 90% of the catalogue's count fails)."""
    entry = CATALOG[name]
    items, pending = [], list(bodies)
    for item in entry.downloads:
        if item.manual:
            items.append(item)
            continue
        body = pending.pop(0)
        served.files[f"/{item.filename}"] = body
        md5 = hashlib.md5(body).hexdigest() if pin else None
        items.append(replace(item, url=f"{base}/{item.filename}", md5=md5, sha256=None, size=None))
    count = entry.images if images is None else images
    return {**CATALOG, name: replace(entry, downloads=tuple(items), images=count)}


def link_shared(root: Path, *names: str) -> None:
    """Put the shared copies of ``names`` into ``root`` (the sets a fetch de-duplicates against)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).symlink_to(DATA / name, target_is_directory=True)
