"""The dataset catalogue: every dataset the shipped recipes read, where it comes from.

Each :class:`CatalogEntry` says what a dataset is (images, classes, licence,
citation), which files make it (:class:`Download`: a pinned URL or a repository
archive at a fixed commit, with the checksum the field's own libraries publish where
they publish one), and which preparation (``sslmed.data.fetch.unpack``) turns those files
into the layout of ``../shared/data``: ``<name>/images/`` + ``labels.csv`` (``path``
relative to ``images/``, ``label``, the source's metadata columns), 8-bit grey,
shorter side at most 256 px (or the size the entry gives), exact and near duplicates
of the sets listed before it removed. ``sslmed data fetch`` runs it; ``sslmed data
list`` shows it.

The order of :data:`CATALOG` is the de-duplication order: a dataset keeps no image
that duplicates one of a dataset listed before it (the first set keeps its copy).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sslmed.core.errors import UsageError
from sslmed.data.roots import resolve_data_root

#: the completeness marker of a prepared dataset folder, written last, inside the
#: temporary folder, before the folder is renamed into place
MARKER = ".sslmed-dataset.json"
#: where downloads (and files a user downloads by hand) wait, under the data root
DOWNLOADS = ".downloads"
#: a fetched copy must hold at least this share of the catalogue's image count
#: (:attr:`CatalogEntry.min_images`), or the fetch fails and nothing is put in place. The
#: sources that change grow rather than shrink (the HEAD archives of Hannover and
#: COVID-CXNet, the full COVID-19 Radiography Database of cxr_corpus: larger, so there
#: is no upper bound); the counts are after de-duplication, which removes fewer images,
#: not more, from a data root lacking some earlier sets. 10% leaves a repository room to
#: drop a few images; a truncated or wrong archive (6 images for covid3's 1,123, or
#: Hannover's older data.csv listing about 200 of its 243: not the catalogued copy) fails.
MIN_IMAGES_FRACTION = 0.9


@dataclass(frozen=True)
class Download:
    """One file a dataset is made from.

    ``md5``/``sha256``: the checksum of the downloaded file where it is known; ``None``
    for both means *unpinned* (e.g. a GitHub archive, which GitHub does not promise to
    keep byte-identical): the preparation then checks the archive's structure and the
    image counts instead, and the fetch records the sha256 it got in the dataset's
    marker. ``manual``: the file cannot be downloaded without an account; the text says
    where to get it, and the user puts it at ``<data root>/.downloads/<filename>``.
    """

    key: str
    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None  # bytes, where known: shown before the download, checked after
    manual: str | None = None
    checksum_from: str = ""  # where the pinned checksum was published

    @property
    def pinned(self) -> bool:
        """True when the file's checksum is known in advance."""
        return bool(self.md5 or self.sha256)


@dataclass(frozen=True)
class CatalogEntry:
    """One dataset of the catalogue: what it is, where it comes from, how it is prepared."""

    name: str
    title: str
    images: int  # images in the prepared copy of ../shared/data
    classes: str
    licence: str
    citation: str
    source: str  # a URL a person can open
    downloads: tuple[Download, ...]
    size_mb: float  # of the prepared folder, as in ../shared/data
    # the function of sslmed.data.fetch.unpack that turns the downloads into the folder
    # (named, not imported: the fetch code sits above the catalogue)
    prepare: str = ""
    layout: str = "folder"  # "folder": images/ + labels.csv; "npz": one MedMNIST .npz file
    deduplicate: bool = True  # False: kept whole, as the copy in ../shared/data is (see note)
    note: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def min_images(self) -> int:
        """The fewest images a fetched copy may hold: :data:`MIN_IMAGES_FRACTION` of ``images``."""
        return math.ceil(self.images * MIN_IMAGES_FRACTION)

    @property
    def needs_account(self) -> bool:
        """True when a file must be downloaded by hand (e.g. from Kaggle)."""
        return any(d.manual for d in self.downloads)


# ------------------------------------------------------------------- the files

# MedMNIST v2, from the `medmnist` package (3.0.2), medmnist/info.py INFO["pneumoniamnist"]
# ("url" and "MD5"); pinned here rather than imported because the package pulls in
# scikit-image, pandas and fire.
PNEUMONIAMNIST_NPZ = Download(
    key="pneumoniamnist.npz",
    url="https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1",
    filename="pneumoniamnist.npz",
    md5="28209eda62fecd6e6a2d98b1501bb15f",
    checksum_from="medmnist 3.0.2 INFO['pneumoniamnist']['MD5']",
)
# MONAI's MedNIST archive: monai.apps.MedNISTDataset.resource / .md5 (also in MONAI's
# tutorials), the same URL and MD5 MONAI's own download uses.
MEDNIST_TAR = Download(
    key="MedNIST.tar.gz",
    url="https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/MedNIST.tar.gz",
    filename="MedNIST.tar.gz",
    md5="0bc7306e7427e00ad1c5526a6677552d",
    checksum_from="monai.apps.MedNISTDataset.md5",
)
# Repository archives at a fixed commit: the content is fixed by the commit; the bytes of
# the zip that GitHub generates are not guaranteed, so they stay unpinned (structure and
# counts are checked instead).
DARKCOVIDNET_COMMIT = "da7714c5dded0bd56bfb9f12dae6cd11bf802025"
DARKCOVIDNET_ZIP = Download(
    key="darkcovidnet.zip",
    url=f"https://github.com/muhammedtalo/COVID-19/archive/{DARKCOVIDNET_COMMIT}.zip",
    filename=f"muhammedtalo-COVID-19-{DARKCOVIDNET_COMMIT[:12]}.zip",
)
# The Hannover and COVID-CXNet repositories grew after the commits this project's code index
# holds (e.g. its Hannover data.csv lists about 200 of the 243 images of ../shared/data), so
# their current default branch (GitHub's HEAD archive) is fetched; the commit that arrived is
# read from the archive (git writes it into the zip comment) and kept in the fetch record.
HANNOVER_ZIP = Download(
    key="hannover.zip",
    url="https://github.com/ml-workgroup/covid-19-image-repository/archive/HEAD.zip",
    filename="ml-workgroup-covid-19-image-repository-HEAD.zip",
)
CXNET_ZIP = Download(
    key="cxnet.zip",
    url="https://github.com/armiro/COVID-CXNet/archive/HEAD.zip",
    filename="armiro-COVID-CXNet-HEAD.zip",
)
# Kermany et al.'s own release on Mendeley Data (v2, public, no account); Mendeley
# publishes no checksum for it.
KERMANY_ZIP = Download(
    key="ChestXRay2017.zip",
    url="https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/f12eaf6d-6023-432f-acc9-80c9d7393433/file_downloaded",
    filename="ChestXRay2017.zip",
)
RADIOGRAPHY_ZIP = Download(
    key="covid19-radiography-database.zip",
    url="https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
    filename="covid19-radiography-database.zip",
    manual="the COVID-19 Radiography Database is on Kaggle only, behind a (free) account: sign in, "
    "download it from https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database "
    "(the 'Download' button gives archive.zip)",
)


# ----------------------------------------------------------------- the catalogue

_ENTRIES = (
    CatalogEntry(
        name="pneumoniamnist",
        prepare="prepare_pneumoniamnist",
        title="PneumoniaMNIST (MedMNIST v2)",
        images=5856,
        classes="normal / pneumonia; official splits train 4,708, val 524, test 624",
        licence="CC BY 4.0",
        citation="Yang et al. 2023, MedMNIST v2, Scientific Data 10:41; Kermany et al. 2018, Cell 172:1122",
        source="https://doi.org/10.5281/zenodo.10519652",
        downloads=(PNEUMONIAMNIST_NPZ,),
        size_mb=4.0,
        layout="npz",
        note="the official 28x28 .npz file, kept as published",
        options={"counts": {"train": 4708, "val": 524, "test": 624}},
    ),
    CatalogEntry(
        name="covid3",
        prepare="prepare_covid3",
        title="DarkCovidNet set (COVID-19 / No_findings / Pneumonia)",
        images=1123,
        classes="Covid-19 124, No_findings 499, Pneumonia 500",
        licence="NIH ChestX-ray14: no use restriction; COVID images: per-image open licences (ieee8023)",
        citation="Ozturk et al. 2020, Comput. Biol. Med. 121:103792",
        source="https://github.com/muhammedtalo/COVID-19",
        downloads=(DARKCOVIDNET_ZIP,),
        size_mb=33.0,
        note=f"repository archive at commit {DARKCOVIDNET_COMMIT[:12]} (checksum unpinned: structure checked)",
        options={"classes": ("Covid-19", "No_findings", "Pneumonia")},
    ),
    CatalogEntry(
        name="covid_extra_hannover",
        prepare="prepare_hannover",
        title="Hannover Medical School COVID-19 image repository",
        images=243,
        classes="COVID-19",
        licence="CC BY 3.0",
        citation="Winther et al. 2020, COVID-19 Image Repository, doi:10.6084/m9.figshare.12275009",
        source="https://github.com/ml-workgroup/covid-19-image-repository",
        downloads=(HANNOVER_ZIP,),
        size_mb=11.0,
        note="repository archive of the default branch (commit not pinned: recorded at fetch; checksum unpinned: "
        "structure checked)",
    ),
    CatalogEntry(
        name="covid_extra_cxnet",
        prepare="prepare_cxnet",
        title="COVID-CXNet image collection",
        images=809,
        classes="COVID-19",
        licence="CC BY 4.0 (images)",
        citation="Haghanifar et al. 2022, COVID-CXNet, Multimedia Tools and Applications 81:30615",
        source="https://github.com/armiro/COVID-CXNet",
        downloads=(CXNET_ZIP,),
        size_mb=29.0,
        note="repository archive of the default branch (commit not pinned: recorded at fetch; checksum unpinned: "
        "structure checked); patient_id from metadata.csv where listed, pediatric_flag = age under 18 there",
    ),
    CatalogEntry(
        name="cxr_corpus",
        prepare="prepare_cxr_corpus",
        title="Unlabelled adult chest X-ray corpus (COVID-19 Radiography Database + MedNIST CXR)",
        images=22548,
        classes="none needed (label COVID / Normal under radiography/, empty under mednist_cxr/)",
        licence="radiography/: research use (Qatar University / Dhaka University); mednist_cxr/: CC BY-SA 4.0",
        citation="Chowdhury et al. 2020, IEEE Access 8:132665; Rahman et al. 2021, Comput. Biol. Med. 132:104319; "
        "MedNIST (B. Erickson, Mayo Clinic)",
        source="https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
        downloads=(RADIOGRAPHY_ZIP, MEDNIST_TAR),
        size_mb=119.0,
        note="radiography/ needs a Kaggle account (download by hand); the full database has more COVID and Normal "
        "images than the partial copy in ../shared/data, so a fetched corpus is larger",
        options={"radiography_side": 128, "radiography_classes": ("COVID", "Normal")},
    ),
    CatalogEntry(
        name="kermany",
        prepare="prepare_kermany",
        title="Kermany et al. paediatric chest X-rays (ChestXRay2017)",
        images=5840,
        classes="normal 1,575 / pneumonia 4,265; official train 5,216, test 624",
        licence="CC BY 4.0",
        citation="Kermany et al. 2018, Cell 172:1122, doi:10.17632/rscbjbr9sj.2",
        source="https://data.mendeley.com/datasets/rscbjbr9sj/2",
        downloads=(KERMANY_ZIP,),
        size_mb=47.0,
        note="Mendeley Data release (public; checksum unpinned: structure checked); the val split (16 images) is "
        "left out as in ../shared/data; not de-duplicated, as in ../shared/data: it is PneumoniaMNIST's source, "
        "repeats a few files itself, and 734 of its train images (none of its test images) are also in "
        "cxr_corpus; also on Kaggle (paultimothymooney/chest-xray-pneumonia, account needed)",
        options={"side": 224},
        deduplicate=False,
    ),
    CatalogEntry(
        name="not_cxr",
        prepare="prepare_not_cxr",
        title="MedNIST images that are not chest radiographs",
        images=500,
        classes="AbdomenCT, BreastMRI, ChestCT, Hand, HeadCT: 100 each",
        licence="CC BY-SA 4.0",
        citation="MedNIST (B. Erickson, Mayo Clinic), as distributed by MONAI",
        source="https://github.com/Project-MONAI/MONAI-extra-test-data/releases/tag/0.8.1",
        downloads=(MEDNIST_TAR,),
        size_mb=2.0,
        note="every 50th image (000000, 000050, ... 004950) of each class",
        options={"classes": ("AbdomenCT", "BreastMRI", "ChestCT", "Hand", "HeadCT"), "every": 50, "per_class": 100},
    ),
)

#: every dataset, in de-duplication order
CATALOG: dict[str, CatalogEntry] = {entry.name: entry for entry in _ENTRIES}


def get_entry(name: str) -> CatalogEntry:
    """The catalogue entry ``name``, or a :class:`UsageError` listing the known names."""
    if name not in CATALOG:
        raise UsageError(f"no dataset {name!r} in the catalogue (datasets: {', '.join(CATALOG)})")
    return CATALOG[name]


def earlier(name: str) -> list[str]:
    """The datasets listed before ``name``: the ones it is de-duplicated against."""
    names = list(CATALOG)
    return names[: names.index(name)]


# -------------------------------------------------------------------- presence


def dataset_dir(name: str, root: Path) -> Path:
    """The folder of dataset ``name`` under ``root``."""
    return Path(root) / name


def is_present(name: str, root: Path) -> bool:
    """True when ``root`` holds a complete copy of ``name`` (fetched, or laid out by hand)."""
    folder = dataset_dir(name, root)
    if (folder / MARKER).is_file():
        return True
    if CATALOG[name].layout == "npz":
        return (folder / f"{name}.npz").is_file()
    return (folder / "labels.csv").is_file() and (folder / "images").is_dir()


def provenance(name: str, root: Path) -> dict[str, Any]:
    """Where the copy of ``name`` under ``root`` came from: the fetch record, or a note
    that it was not fetched by sslmed (e.g. the shared copy)."""
    folder = dataset_dir(name, root)
    marker = folder / MARKER
    if marker.is_file():
        try:
            return {"path": str(folder), **json.loads(marker.read_text(encoding="utf-8"))}
        except (OSError, ValueError):
            return {"path": str(folder), "origin": f"unreadable fetch record {marker}"}
    if is_present(name, root):
        return {"path": str(folder), "origin": "not fetched by sslmed (no fetch record)"}
    return {"path": str(folder), "origin": "missing"}


# ------------------------------------------------------------- recipes -> names


def _paths_in(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "path" and isinstance(item, str):
                yield item
            else:
                yield from _paths_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _paths_in(item)


def datasets_for_specs(specs: Iterable[Any]) -> list[str]:
    """Catalogue names that dataset specs (plain dicts, nested ``union`` sources included)
    read through relative paths, in catalogue order."""
    wanted = set()
    for spec in specs:
        for path in _paths_in(spec):
            parts = Path(path).parts
            if parts and not Path(path).is_absolute() and parts[0] in CATALOG:
                wanted.add(parts[0])
    return [name for name in CATALOG if name in wanted]


def datasets_for_recipe(recipe: Any) -> list[str]:
    """Catalogue names a loaded recipe's used data reads (steps' and evaluation's data)."""
    used = {s.data for s in recipe.steps} | ({recipe.evaluation.data} if recipe.evaluation else set())
    return datasets_for_specs(spec.spec() for alias, spec in recipe.data.items() if alias in used)


def missing_datasets(recipe: Any, root: Path) -> list[str]:
    """The catalogue datasets a recipe needs that ``root`` does not hold."""
    return [name for name in datasets_for_recipe(recipe) if not is_present(name, root)]


def _default_root() -> Path:

    return resolve_data_root()


def fetch_hint(recipe: Any, root: Path) -> str | None:
    """The message for a recipe whose catalogue datasets are missing from ``root``: which
    ones, and the one command that fetches them (``None`` when none is missing)."""
    missing = missing_datasets(recipe, root)
    if not missing:
        return None
    same = Path(root).resolve() == _default_root().resolve()
    command = "sslmed data fetch " + " ".join(missing) + ("" if same else f" --root {root}")
    return (
        f"dataset(s) {', '.join(missing)} not in the data root {root}: fetch them with `{command}` "
        "(`sslmed data list` shows the catalogue)"
    )


def content_digest(name: str, root: Path) -> str | None:
    """A short SHA-256 of what the copy of ``name`` under ``root`` holds: the rows of
    ``labels.csv`` and the bytes of every image it lists (for the ``.npz`` layout: every array). Two copies
    with the same digest are the same data, wherever each came from."""
    folder = dataset_dir(name, root)
    digest = hashlib.sha256()
    try:
        if CATALOG[name].layout == "npz":
            with np.load(folder / f"{name}.npz", allow_pickle=False) as arrays:
                for key in sorted(arrays.files):
                    digest.update(key.encode() + b"\0" + np.ascontiguousarray(arrays[key]).tobytes())
        else:
            with open(folder / "labels.csv", newline="", encoding="utf-8-sig") as handle:
                reader = csv.reader(handle)  # rows, not bytes: line endings do not matter
                header = next(reader)
                digest.update(json.dumps(header).encode())
                for values in reader:
                    digest.update(json.dumps(values).encode())
                    path = folder / "images" / values[header.index("path")]
                    digest.update(hashlib.md5(path.read_bytes()).digest())
    except (OSError, ValueError, KeyError, StopIteration):
        return None  # incomplete or unreadable: the dataset adapters report what is wrong
    return digest.hexdigest()[:16]


def data_copies(recipe: Any) -> dict[str, Any]:
    """For a run manifest: the data root and, for each catalogue dataset the recipe reads,
    which copy it is (the fetch record: origin, date, file checksums; or a note that the
    copy was not fetched by sslmed) and its :func:`content_digest`."""
    root = Path(recipe.data_root) if recipe.data_root else _default_root()
    copies = {}
    for name in datasets_for_recipe(recipe):
        record = provenance(name, root)
        if isinstance(record.get("duplicates_removed"), list):
            record["duplicates_removed"] = len(record["duplicates_removed"])
        record["content"] = content_digest(name, root)
        copies[name] = record
    return {"data_root": str(root), "datasets": copies}
