"""Predictions and embeddings for whole archives: ``sslmed predict|embed RUN DIR|CSV --out``.

Images stream through in batches (a worker pool decodes and resizes, the model runs in
the main process), so memory stays bounded by the batch size whatever the archive's
size. Every input becomes one row, in input order: an image that cannot be read gets
its error in the ``error`` column (and empty probabilities, or a row of NaN features)
instead of stopping the run.

Outputs are written atomically: rows go to ``<out>.partial`` (flushed after every
batch) and the finished file replaces ``<out>`` in one rename. Started again with the
same arguments after an interruption, a run reads ``<out>.partial`` and continues after
the last complete batch.

* ``predictions.csv``: ``path``, one column per class (calibrated probability),
  ``predicted``, ``ood_score``, ``ood_flag``, ``error``.
* ``embeddings.npy``: ``N×feature_dim`` float32 (NaN rows for unreadable images) with
  ``embeddings.paths.csv`` beside it (``path``, ``error``, row order);
  ``embeddings.parquet``: columns ``path``, ``error``, ``embedding`` (list of float32;
  needs pyarrow: ``pip install 'sslmed[parquet]'``).
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslmed.core.errors import DataError, SslmedError, UsageError
from sslmed.data.adapters import IMAGE_SUFFIXES
from sslmed.evaluation.ood import input_statistics
from sslmed.serving.predict import Prediction, Predictor

PARTIAL = ".partial"
EMBEDDING_FORMATS = (".npy", ".parquet")


# ------------------------------------------------------------------ the inputs


def list_inputs(source: Path) -> tuple[list[str], list[Path]]:
    """Row names and files of ``source``: every image file under a folder (sorted, names
    relative to it), or the ``path`` column of a CSV (names as written; relative paths
    resolve against the CSV's folder, or its ``images/`` folder as in sslmed's data
    layout)."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{source}: no image files here (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return [p.relative_to(source).as_posix() for p in files], files
    if not source.is_file():
        raise UsageError(f"{source}: not found (give a folder of images or a CSV with a 'path' column)")
    if source.suffix.lower() != ".csv":
        raise UsageError(f"{source}: give a folder of images or a .csv file with a 'path' column")
    with open(source, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if "path" not in (reader.fieldnames or []):
            raise DataError(f"{source}: no 'path' column (columns: {', '.join(reader.fieldnames or [])})")
        names = [row["path"] for row in reader if row.get("path")]
    if not names:
        raise DataError(f"{source}: no rows with a path")
    images = source.parent / "images"
    base = images if images.is_dir() and not (source.parent / names[0]).exists() else source.parent
    return names, [Path(n) if Path(n).is_absolute() else base / n for n in names]


class _Images(torch.utils.data.Dataset):
    """File -> (index, model input or None, error or "")."""

    def __init__(self, predictor: Predictor, files: list[Path], indices: list[int]) -> None:
        self.predictor, self.files, self.indices = predictor, files, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        index = self.indices[i]
        try:
            return index, self.predictor.model_input(self.predictor.load(self.files[index]))[0], ""
        except SslmedError as exc:
            return index, None, str(exc)
        except Exception as exc:  # any decoder failure is this file's error, not the run's
            return index, None, f"{self.files[index]}: {type(exc).__name__}: {exc}"


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> list[tuple[int, torch.Tensor | None, str]]:
    return items


@dataclass
class Batch:
    """One batch's rows: input indices, errors ("" when read), and for the rows that
    were read (``ok``) their probabilities, features, OOD scores and input-gate scores
    (None where the export has no such check)."""

    indices: list[int]
    errors: list[str]
    ok: list[int]  # positions in this batch of the images that were read
    probabilities: np.ndarray
    features: np.ndarray
    scores: np.ndarray | None
    gates: np.ndarray | None = None


def batches(predictor: Predictor, files: list[Path], todo: list[int], batch_size: int, workers: int) -> Iterator[Batch]:
    """The inputs ``todo`` (indices into ``files``) through the model, in order."""
    loader = torch.utils.data.DataLoader(
        _Images(predictor, files, todo),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        shuffle=False,
    )
    for items in loader:
        ok = [i for i, (_, tensor, _) in enumerate(items) if tensor is not None]
        if ok:
            inputs = torch.stack([items[i][1] for i in ok])
            probabilities, features, scores = predictor.forward_batch(inputs)
            # the same two checks as Prediction.ood_flag: feature distance, or the input gate
            gates = predictor.gate.score(input_statistics(inputs)) if predictor.gate is not None else None
        else:
            probabilities = features = np.zeros((0, 0), dtype=np.float32)
            scores = gates = None
        yield Batch([it[0] for it in items], [it[2] for it in items], ok, probabilities, features, scores, gates)


def _progress(total: int, done: int, show: bool) -> Any:
    from tqdm import tqdm  # here: only batch runs draw a bar

    return tqdm(total=total, initial=done, unit="img", file=sys.stderr, disable=not show, dynamic_ncols=True)


def default_workers() -> int:
    """Decoding processes: one per core but one (the model's), at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


# ----------------------------------------------------------------- predictions


def _prediction_header(predictor: Predictor) -> list[str]:
    return ["path", *predictor.classes, "predicted", "ood_score", "ood_flag", "error"]


def _read_partial_csv(partial: Path, header: list[str]) -> set[str]:
    """Paths already written to ``partial`` (cut back to its last complete line)."""
    data = partial.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(partial, "r+b") as handle:
            handle.truncate(end)
    rows = list(csv.reader(io.StringIO(data[:end].decode("utf-8"))))
    if not rows or rows[0] != header:
        raise UsageError(
            f"{partial}: left by a run with other classes or columns; delete it to start again "
            f"(expected columns {', '.join(header)})"
        )
    return {row[0] for row in rows[1:] if row}


def predict_archive(
    model: str | Path | Predictor,
    source: Path,
    out: Path,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write ``out`` (CSV): one row per input of ``source``; returns counts
    (``images``, ``failed``, ``resumed``: rows found in ``<out>.partial``)."""
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    names, files = list_inputs(source)
    header = _prediction_header(predictor)
    partial = out.with_name(out.name + PARTIAL)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _read_partial_csv(partial, header) if partial.is_file() else set()
    todo = [i for i, name in enumerate(names) if name not in done]
    mode = "a" if done or partial.is_file() else "w"
    threshold = predictor.ood.threshold if predictor.ood is not None else None
    gate_threshold = predictor.gate.threshold if predictor.gate is not None else None
    with open(partial, mode, newline="", encoding="utf-8") as handle, _progress(len(names), len(done), progress) as bar:
        writer = csv.writer(handle)
        if mode == "w":
            writer.writerow(header)
        workers = default_workers() if workers is None else workers
        for batch in batches(predictor, files, todo, batch_size, workers):
            position = {b: k for k, b in enumerate(batch.ok)}
            for b, (index, error) in enumerate(zip(batch.indices, batch.errors, strict=True)):
                if b not in position:
                    writer.writerow([names[index], *[""] * len(predictor.classes), "", "", "", error])
                    continue
                row = batch.probabilities[position[b]]
                score = None if batch.scores is None else float(batch.scores[position[b]])
                gate = None if batch.gates is None else float(batch.gates[position[b]])
                flagged = Prediction({}, False, score, threshold, gate, gate_threshold).ood_flag
                writer.writerow(
                    [
                        names[index],
                        *[f"{p:.6f}" for p in row],
                        predictor.classes[int(row.argmax())],
                        "" if score is None else f"{score:.4f}",
                        "" if flagged is None else str(flagged).lower(),
                        "",
                    ]
                )
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch.indices))
    with open(partial, newline="", encoding="utf-8") as handle:
        failed = sum(1 for row in csv.DictReader(handle) if row["error"])
    os.replace(partial, out)
    return {"images": len(names), "failed": failed, "resumed": len(done)}


# ------------------------------------------------------------------ embeddings


def paths_file(out: Path) -> Path:
    """``embeddings.paths.csv`` beside ``embeddings.npy``: the path and error of each row."""
    return out.with_name(out.stem + ".paths.csv")


def embed_archive(
    model: str | Path | Predictor,
    source: Path,
    out: Path,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write the pooled features of every input of ``source`` to ``out`` (``.npy`` with
    its ``.paths.csv``, or ``.parquet``); returns counts as :func:`predict_archive`."""
    suffix = out.suffix.lower()
    if suffix not in EMBEDDING_FORMATS:
        raise UsageError(f"{out}: the embeddings file must end in {' or '.join(EMBEDDING_FORMATS)}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401  here: checked before any work, an optional dependency
        except ImportError:
            raise UsageError(f"{out}: writing Parquet needs pyarrow (pip install 'sslmed[parquet]')") from None
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    names, files = list_inputs(source)
    dim = int(predictor.model.backbone.feature_dim)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the rows: a memory-mapped .npy of the final shape, filled in order, beside the paths read so far
    matrix_path = out.with_name(out.stem + ".npy" + PARTIAL)
    rows_path = out.with_name(out.stem + ".paths.csv" + PARTIAL)
    header = ["path", "error"]
    done = 0
    if matrix_path.is_file() and rows_path.is_file():
        matrix = np.load(matrix_path, mmap_mode="r+")
        if matrix.shape != (len(names), dim):
            raise UsageError(
                f"{matrix_path}: left by a run over other inputs or another model "
                f"({matrix.shape[0]}×{matrix.shape[1]}, now {len(names)}×{dim}); delete it to start again"
            )
        finished = _read_partial_csv(rows_path, header)
        done = len(finished)
        if any(name not in finished for name in names[:done]):
            raise UsageError(f"{rows_path}: its rows are not the first inputs of {source}; delete it to start again")
    else:
        matrix = np.lib.format.open_memmap(matrix_path, mode="w+", dtype=np.float32, shape=(len(names), dim))
        with open(rows_path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(header)
    with open(rows_path, "a", newline="", encoding="utf-8") as handle, _progress(len(names), done, progress) as bar:
        writer = csv.writer(handle)
        workers = default_workers() if workers is None else workers
        for batch in batches(predictor, files, list(range(done, len(names))), batch_size, workers):
            position = {b: k for k, b in enumerate(batch.ok)}
            for b, index in enumerate(batch.indices):
                matrix[index] = batch.features[position[b]] if b in position else np.nan
            matrix.flush()  # the features first: a row in the paths file means its features are on disk
            writer.writerows([names[i], e] for i, e in zip(batch.indices, batch.errors, strict=True))
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch.indices))
    del matrix
    with open(rows_path, newline="", encoding="utf-8") as handle:
        failed = sum(1 for row in csv.DictReader(handle) if row["error"])
    if suffix == ".npy":
        os.replace(matrix_path, out)
        os.replace(rows_path, paths_file(out))
    else:
        _write_parquet(out, np.load(matrix_path, mmap_mode="r"), rows_path)
        matrix_path.unlink()
        rows_path.unlink()
    return {"images": len(names), "failed": failed, "resumed": done}


def _write_parquet(out: Path, matrix: np.ndarray, rows_path: Path, chunk: int = 4096) -> None:
    """``matrix`` and the paths file as one Parquet file, in row groups of ``chunk`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(rows_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    dim = matrix.shape[1]
    schema = pa.schema([("path", pa.string()), ("error", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])
    temp = out.with_name(f".{out.name}.tmp")
    try:
        with pq.ParquetWriter(temp, schema) as writer:
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                values = pa.array(np.ascontiguousarray(matrix[start : start + len(part)]).reshape(-1))
                table = pa.table(
                    {
                        "path": [r["path"] for r in part],
                        "error": [r["error"] or None for r in part],
                        "embedding": pa.FixedSizeListArray.from_arrays(values, dim),
                    },
                    schema=schema,
                )
                writer.write_table(table)
        os.replace(temp, out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
