"""The decode check of every file before training: stop with every unreadable file
named, or leave them out and list them (``on_error: skip``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Literal

from sslmed.core.errors import DataError, ImageLoadError
from sslmed.data.imaging import check_image
from sslmed.data.sources import ImageRecord, ImageSource, SkippedFile

log = logging.getLogger(__name__)


OnError = Literal["error", "skip"]


def verify_source(source: ImageSource, on_error: OnError = "error", workers: int | None = None) -> ImageSource:
    """Decode every file of ``source`` once; stop on unreadable files or leave them out.

    ``on_error="error"`` raises one :class:`DataError` naming every unreadable file
    and the reason; ``"skip"`` removes them from the splits and lists them in
    ``source.skipped``. Sources read from arrays have nothing to verify.
    """
    checks: list[tuple[str, ImageRecord, Path]] = []
    for split, records in source.splits.items():
        for record in records:
            path = source.path_of(record)
            if path is not None:
                checks.append((split, record, path))
    if not checks:
        return source
    workers = workers or min(8, os.cpu_count() or 1)

    def check(path: Path) -> str | None:
        try:
            check_image(path)
        except ImageLoadError as exc:
            text = str(exc)
            return text[len(str(path)) + 2 :] if text.startswith(f"{path}: ") else text
        return None

    if workers > 1 and len(checks) > 64:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # decoders release the GIL
            reasons = list(pool.map(check, [p for _, _, p in checks], chunksize=32))
    else:
        reasons = [check(p) for _, _, p in checks]
    pairs = zip(checks, reasons, strict=False)
    bad = [(split, record, path, reason) for (split, record, path), reason in pairs if reason]
    return apply_failures(source, bad, on_error)


def apply_failures(
    source: ImageSource, bad: Sequence[tuple[str, ImageRecord, Path, str]], on_error: OnError
) -> ImageSource:
    """Raise for (``error``) or leave out (``skip``) the ``(split, record, path, reason)`` failures."""
    if not bad:
        return source
    if on_error == "error":
        shown = "\n  ".join(f"{path}: {reason}" for _, _, path, reason in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"data {source.name!r}: {len(bad)} unreadable image file(s):\n  {shown}{more}\n"
            f"fix or remove them, or set on_error: skip in the data section to leave them out"
        )
    log.warning(
        "data %r: %d unreadable file(s) left out (on_error: skip), e.g. %s: %s",
        source.name,
        len(bad),
        bad[0][2],
        bad[0][3],
    )
    dropped = {(split, id(record)) for split, record, _, _ in bad}
    splits = {split: [r for r in records if (split, id(r)) not in dropped] for split, records in source.splits.items()}
    skipped = list(source.skipped) + [SkippedFile(str(record.ref), split, reason) for split, record, _, reason in bad]
    return replace(source, splits=splits, skipped=skipped)
