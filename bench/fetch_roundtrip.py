"""The whole catalogue through ``sslmed data fetch``, offline: is a fetched copy the same data?

Archives laid out like each dataset's public origin are built from the full copies in
../shared/data (:mod:`sslmed.testing.loopback`) and served on 127.0.0.1; every dataset is
fetched in catalogue order into an empty data root, so each is de-duplicated against
the ones fetched before it, as on a fresh machine. Each fetched dataset is then
compared with the shared copy: images, ``labels.csv`` rows, content digest (rows +
image bytes), and the dataset adapter's fingerprint and splits.

    .venv/bin/python bench/fetch_roundtrip.py              # all seven (a few minutes on 2 cores)
    .venv/bin/python bench/fetch_roundtrip.py --only covid3 not_cxr

Results go to stdout as a Markdown table (for docs/benchmarks.md); note the machine and load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from sslmed.core.plugins import get_registry  # noqa: E402
from sslmed.data.catalog import CATALOG, MARKER, content_digest  # noqa: E402
from sslmed.data.fetch import fetch_dataset  # noqa: E402
from sslmed.testing.loopback import (
    DATA,
    covid3_zip,
    cxnet_zip,
    hannover_zip,
    kermany_zip,
    loopback_server,
    mednist_tar,
    radiography_zip,
    serve,
    shared_rows,
)

#: how the dataset adapters read each set (the splits compared)
SPECS = {
    "pneumoniamnist": {"name": "medmnist_npz", "path": "pneumoniamnist/pneumoniamnist.npz"},
    "covid3": {"name": "csv", "path": "covid3", "patient_column": "patient_id"},
    "covid_extra_hannover": {"name": "csv", "path": "covid_extra_hannover", "patient_column": "patient_id"},
    "covid_extra_cxnet": {"name": "csv", "path": "covid_extra_cxnet"},
    "cxr_corpus": {"name": "csv", "path": "cxr_corpus", "label_column": None, "test_size": 0, "val_size": 0},
    "kermany": {"name": "csv", "path": "kermany", "patient_column": "patient_id", "split_column": "split"},
    "not_cxr": {"name": "csv", "path": "not_cxr"},
}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(CATALOG), help="fetch only these (in catalogue order)")
    args = parser.parse_args()
    names = [n for n in CATALOG if not args.only or n in args.only]
    corpus = shared_rows("cxr_corpus")
    radiography = [r for r in corpus if r["source"] != "mednist_nih"]
    mednist_cxr = [r for r in corpus if r["source"] == "mednist_nih"]
    mednist = mednist_tar(cxr=mednist_cxr)  # one MedNIST archive for cxr_corpus and not_cxr, as at the origin
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs; load before: {open('/proc/loadavg').read().strip()}")
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp, loopback_server() as (served, base):
        root, kaggle = Path(tmp) / "data", Path(tmp) / "kaggle"
        kaggle.mkdir()
        for name in names:
            started = time.perf_counter()
            if name == "pneumoniamnist":
                catalog = serve(served, base, name, (DATA / name / "pneumoniamnist.npz").read_bytes())
            elif name == "covid3":
                catalog = serve(served, base, name, covid3_zip(), pin=False)
            elif name == "covid_extra_hannover":
                catalog = serve(served, base, name, hannover_zip(), pin=False)
            elif name == "covid_extra_cxnet":
                catalog = serve(served, base, name, cxnet_zip(), pin=False)
            elif name == "cxr_corpus":
                (kaggle / CATALOG[name].downloads[0].filename).write_bytes(radiography_zip(radiography))
                catalog = serve(served, base, name, mednist)
            elif name == "kermany":
                catalog = serve(served, base, name, kermany_zip(), pin=False)
            else:
                catalog = serve(served, base, name, mednist)
            built = time.perf_counter()
            result = fetch_dataset(name, root, quiet=True, search=[kaggle], catalog=catalog)
            fetched = time.perf_counter()
            same_rows = name == "pneumoniamnist" or _rows(root / name / "labels.csv") == _rows(
                DATA / name / "labels.csv"
            )
            same_content = content_digest(name, root) == content_digest(name, DATA)
            registry = get_registry()
            spec = {**SPECS[name], "verify": False} if SPECS[name]["name"] == "csv" else SPECS[name]
            mine = registry.build("dataset", spec, data_root=root)
            theirs = registry.build("dataset", spec, data_root=DATA)
            same_splits = mine.fingerprint() == theirs.fingerprint() and mine.summary() == theirs.summary()
            images = result.images if result.images is not None else sum(len(r) for r in mine.splits.values())
            rows_out.append(
                (
                    name,
                    images,
                    CATALOG[name].images,
                    result.removed,
                    same_rows,
                    same_content,
                    same_splits,
                    built - started,
                    fetched - built,
                )
            )
            reasons = Counter(
                d["reason"] for d in json.loads((root / name / MARKER).read_text()).get("duplicates_removed", [])
            )
            print(f"{name}: done in {fetched - built:.1f}s; left out: {dict(reasons)}", file=sys.stderr, flush=True)
    print(f"load after: {open('/proc/loadavg').read().strip()}")
    print()
    columns = (
        "dataset",
        "images fetched",
        "images shared",
        "duplicates left out",
        "same labels.csv rows",
        "same content digest",
        "same fingerprint and splits",
        "archive built (s)",
        "fetch + prepare (s)",
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    yes = {True: "yes", False: "**no**"}
    for name, images, shared, removed, rows, content, splits, build_s, fetch_s in rows_out:
        cells = (f"`{name}`", f"{images:,}", f"{shared:,}", removed, yes[rows], yes[content], yes[splits])
        print("| " + " | ".join(map(str, cells)) + f" | {build_s:.1f} | {fetch_s:.1f} |")


if __name__ == "__main__":
    main()
