"""Dataset adapter ``chexpert``: the CheXpert v1.0 release in its official layout.

The release is a folder ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``) holding
``train.csv`` and ``valid.csv`` with the header::

    Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,
    Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,
    Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices

``Path`` is relative to the folder *above* the release
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``). Each finding
is ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain) or blank (not
mentioned in the report). Labels become one target per chosen finding
(``task="multilabel"``): uncertain ones follow the per-finding policy of Irvin et al.
(2019) (``ignore``: unknown, ``zeros``: negative, ``ones``: positive), blank ones are
negative or unknown. ``train.csv`` gives the ``train`` split (optionally with a
patient-wise ``val`` split carved out of it), ``valid.csv`` the ``test`` split.
With ``labelled: false`` the adapter lists images only, for pre-training.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sslmed.core.errors import DataError
from sslmed.core.hookspecs import Register, hookimpl
from sslmed.core.registry import close_matches
from sslmed.data.adapters import (
    UNLABELLED,
    ImageRecord,
    ImageSource,
    LoadingArgs,
    file_reader,
    finish_source,
    read_csv_rows,
    resolve_path,
    split_records,
)

#: the 14 observations of CheXpert, in the order of the official CSV header
FINDINGS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: the five findings of the CheXpert competition (Irvin et al. 2019)
COMPETITION_FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
HEADER = META_COLUMNS + FINDINGS
RELEASE_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
PATIENT_PATTERN = re.compile(r"(?:^|/)(patient\d+)(?:/|$)")

Policy = Literal["ignore", "zeros", "ones"]


class ChexpertArgs(LoadingArgs):
    """The CheXpert v1.0 release (``train.csv``/``valid.csv`` and the images they list)."""

    path: str = Field(
        description="the release folder (CheXpert-v1.0-small) or the folder containing it, absolute or under "
        "the data root"
    )
    findings: list[str] = Field(
        list(COMPETITION_FINDINGS),
        min_length=1,
        description="findings to use as targets, in this order (default: the 5 competition findings)",
    )
    uncertainty: Policy | dict[str, Policy] = Field(
        "ignore",
        description="what an uncertain (-1.0) label becomes: 'ignore' (unknown, left out of loss and metrics), "
        "'zeros' (negative) or 'ones' (positive); one policy for all findings or a mapping finding -> policy "
        "(findings not in the mapping: 'ignore')",
    )
    blank: Literal["negative", "ignore"] = Field("negative", description="what a blank (not mentioned) label becomes")
    frontal_only: bool = Field(True, description="keep frontal views only (Frontal/Lateral == Frontal)")
    labelled: bool = Field(True, description="false: images only (no targets), for pre-training")
    val_size: float = Field(0.0, ge=0, lt=1, description="fraction of train.csv patients held out as a 'val' split")
    split_seed: int = Field(0, description="seed of the patient-wise val split")
    valid_split: str = Field("test", description="split name given to the images of valid.csv")
    verify: bool = Field(
        False,
        description="decode every image once when loading (minutes for the full release; "
        "by default only their existence is checked)",
    )

    @field_validator("findings")
    @classmethod
    def _known_findings(cls, value: list[str]) -> list[str]:
        for finding in value:
            if finding not in FINDINGS:
                hint = close_matches(finding, list(FINDINGS))
                raise ValueError(
                    f"unknown finding {finding!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else f" (findings: {', '.join(FINDINGS)})")
                )
        if len(set(value)) != len(value):
            raise ValueError("a finding is listed twice")
        return value

    @model_validator(mode="after")
    def _policies_for_chosen_findings(self) -> ChexpertArgs:
        if isinstance(self.uncertainty, dict):
            extra = [f for f in self.uncertainty if f not in self.findings]
            if extra:
                raise ValueError(
                    f"uncertainty policy given for finding(s) not in findings: {', '.join(extra)} (findings: "
                    f"{', '.join(self.findings)})"
                )
        return self

    def policy(self, finding: str) -> Policy:
        """The uncertainty policy of one finding."""
        if isinstance(self.uncertainty, dict):
            return self.uncertainty.get(finding, "ignore")
        return self.uncertainty


def parse_value(text: str) -> float | None:
    """A CheXpert label cell: ``1.0``/``0.0``/``-1.0`` as floats, blank as None."""
    text = (text or "").strip()
    if not text:
        return None
    value = float(text)  # ValueError for anything else; the caller names the line
    if value not in (1.0, 0.0, -1.0):
        raise ValueError(text)
    return value


def target_value(value: float | None, policy: Policy, blank: str) -> float:
    """One label cell under the uncertainty and blank policies (``nan``: unknown)."""
    if value is None:
        return 0.0 if blank == "negative" else math.nan
    if value == -1.0:
        return {"ignore": math.nan, "zeros": 0.0, "ones": 1.0}[policy]
    return value


def patient_of(path: str) -> str | None:
    """``patient00001`` from ``CheXpert-v1.0-small/train/patient00001/study1/...``."""
    match = PATIENT_PATTERN.search(path.replace("\\", "/"))
    return match.group(1) if match else None


def locate_release(folder: Path) -> Path:
    """The release folder (the one holding ``train.csv``) given it or its parent."""
    if (folder / "train.csv").is_file() or (folder / "valid.csv").is_file():
        return folder
    for name in RELEASE_FOLDERS:
        if (folder / name / "train.csv").is_file() or (folder / name / "valid.csv").is_file():
            return folder / name
    raise DataError(
        f"{folder}: not a CheXpert release: no train.csv or valid.csv in it or in "
        f"{' or '.join(RELEASE_FOLDERS)}/ below it"
    )


def _records_of(table: Path, args: ChexpertArgs, dropped: dict[str, int]) -> list[ImageRecord]:
    columns, rows = read_csv_rows(table)
    needed = ["Path", "Frontal/Lateral"] + (list(args.findings) if args.labelled else [])
    absent = [c for c in needed if c not in columns]
    if absent:
        raise DataError(
            f"{table}: missing column(s) {', '.join(repr(c) for c in absent)} of the CheXpert header "
            f"(columns: {', '.join(columns)})"
        )
    policies = [args.policy(f) for f in args.findings]
    records = []
    for line, row in enumerate(rows, start=2):
        path = (row["Path"] or "").strip()
        if not path:
            raise DataError(f"{table}: line {line}: empty Path")
        view = (row["Frontal/Lateral"] or "").strip()
        if args.frontal_only and view != "Frontal":
            dropped["lateral"] = dropped.get("lateral", 0) + 1
            continue
        if not args.labelled:
            records.append(ImageRecord(path, UNLABELLED, patient_of(path)))
            continue
        targets = []
        for finding, policy in zip(args.findings, policies, strict=False):
            try:
                value = parse_value(row[finding])
            except ValueError:
                raise DataError(
                    f"{table}: line {line}: {finding} is {row[finding]!r}; CheXpert labels are 1.0, 0.0, -1.0 or blank"
                ) from None
            targets.append(target_value(value, policy, args.blank))
        if all(math.isnan(t) for t in targets):
            dropped["no known finding"] = dropped.get("no known finding", 0) + 1
            continue
        records.append(ImageRecord(path, UNLABELLED, patient_of(path), tuple(targets)))
    return records


def build_chexpert(args: ChexpertArgs, *, data_root: Path, **_context: Any) -> ImageSource:
    """CheXpert v1.0: multi-label findings with uncertainty policies, or images only."""
    release = locate_release(resolve_path(args.path, data_root, "CheXpert folder"))
    image_root = release.parent  # Path values start with the release folder's name
    dropped: dict[str, int] = {}
    given: dict[str, list[ImageRecord]] = {}
    for table_name, split in (("train.csv", "train"), ("valid.csv", args.valid_split)):
        table = release / table_name
        if table.is_file():
            records = _records_of(table, args, dropped)
            if records:
                given.setdefault(split, []).extend(records)
    if not given:
        raise DataError(
            f"{release}: train.csv and valid.csv list no usable images "
            f"({', '.join(f'{n} {k}' for k, n in dropped.items()) or 'empty'})"
        )
    first = next(iter(given.values()))[0]
    if not str(first.ref).startswith(release.name + "/") and (release / str(first.ref)).exists():
        image_root = release  # a re-packed copy whose paths start inside the release folder
    classes = list(args.findings) if args.labelled else []
    details = {
        "release": str(release),
        "dropped": dropped,
        "uncertainty": {f: args.policy(f) for f in args.findings} if args.labelled else None,
        "blank": args.blank if args.labelled else None,
    }
    source = finish_source(
        args.path,
        classes,
        [],
        file_reader(image_root),
        image_root,
        args,
        data_root=data_root,
        given=given,
        task="multilabel" if args.labelled else "multiclass",
        details=details,
    )
    if args.val_size > 0 and "train" in source.splits:
        carved = split_records(source.splits["train"], 0.0, args.val_size, args.split_seed)
        source.splits = {
            "train": carved["train"],
            **({"val": carved["val"]} if "val" in carved else {}),
            **{k: v for k, v in source.splits.items() if k != "train"},
        }
        source.split_origin = (
            f"official (train.csv, valid.csv -> {args.valid_split}); val: patient-wise, seed {args.split_seed}"
        )
    else:
        source.split_origin = f"official (train.csv, valid.csv -> {args.valid_split})"
    return source


@hookimpl
def register_datasets(register: Register) -> None:
    register("chexpert", build_chexpert, args=ChexpertArgs)
