"""Stable import path for plugins: re-exports :mod:`sslmed.data.adapters` (see docs/reference/architecture.md).

Code inside sslmed imports :mod:`sslmed.data.adapters` itself; this module exists so that
third-party plugins written against ``sslmed.adapters`` keep working.
"""

from sslmed.data.adapters import (
    IMAGE_SUFFIXES,
    UNLABELLED,
    ArrayReader,
    ImageRecord,
    ImageSource,
    LoadingArgs,
    SplitArgs,
    TaskName,
    file_reader,
    finish_source,
    listed,
    read_csv_rows,
    resolve_path,
    resolve_split_file,
    split_records,
)
from sslmed.data.adapters import (
    TaskName as Task,  # its name before the package layout of 0.2
)

__all__ = [
    "IMAGE_SUFFIXES",
    "UNLABELLED",
    "ArrayReader",
    "ImageRecord",
    "ImageSource",
    "LoadingArgs",
    "SplitArgs",
    "TaskName",
    "file_reader",
    "finish_source",
    "listed",
    "read_csv_rows",
    "resolve_path",
    "resolve_split_file",
    "split_records",
    "Task",
]
