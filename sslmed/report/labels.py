"""What a report calls things: display names and order of methods, and the claims it checks.

The core report knows no method by name; a study passes its own :class:`Labels`, in
Python or as a YAML file (``sslmed report --labels FILE``), e.g. the thesis's
``bench/thesis_labels.yaml``::

    methods:              # recipe name -> row label, in table order
      simclr: SimCLR
      crsm: CRSM
    claims:               # checked on each target's table (balanced accuracy, 95% CIs)
      - {better: CRSM, worse: SimCLR, claim: CRSM beats SimCLR}
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from sslmed.core.errors import UsageError

#: row labels of the reference rows every evaluation writes
BASELINE_NAMES = {"random_init": "random init", "raw_pixels": "raw pixels", "supervised": "supervised (from scratch)"}


class Claim(BaseModel):
    """``better`` should score above ``worse`` (both row labels of a target's table)."""

    model_config = ConfigDict(extra="forbid")
    better: str
    worse: str
    claim: str = Field(description="the sentence the report prints before the verdict")


class Labels(BaseModel):
    """Display names and order of methods, claims to check, and augmentations to picture."""

    model_config = ConfigDict(extra="forbid")
    methods: dict[str, str] = Field({}, description="recipe name -> row label; rows follow this order")
    claims: list[Claim] = []
    claims_title: str = "Claims checked on this target"
    figure_augmentations: list[str] = Field(
        [], description="tensor-stage augmentations always shown in the augmentation figure"
    )

    def method(self, name: str) -> str:
        """The row label of recipe ``name`` (the name itself if it has none)."""
        return self.methods.get(name, name)

    @classmethod
    def from_file(cls, path: str | Path) -> Labels:
        """Read labels from a YAML file; a problem names the file and the key."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise UsageError(f"labels file {path}: cannot be read ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"labels file {path}: invalid YAML ({exc})") from None
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'top level'}: {e['msg']}" for e in exc.errors()
            )
            raise UsageError(f"labels file {path}: {problems}") from None
