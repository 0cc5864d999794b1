"""``verify: false`` with ``on_error: skip``: a file that exists but does not decode is
left out while training (the next image is used), never where labels are read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sslmed.core.errors import ImageLoadError
from sslmed.data.readers import ImageDataset
from sslmed.default_plugins.datasets import CsvArgs, build_csv


@pytest.fixture
def folder_with_a_bad_file(tmp_path: Path, data_dir: Path) -> Path:
    folder = tmp_path / "small"
    (folder / "images").mkdir(parents=True)
    samples = sorted((data_dir / "samples").glob("*.png"))[:4]
    lines = ["path,label"]
    for index, sample in enumerate(samples):
        shutil.copy(sample, folder / "images" / f"ok{index}.png")
        lines.append(f"ok{index}.png,{'ab'[index % 2]}")
    (folder / "images" / "bad.png").write_bytes(samples[0].read_bytes()[:200])  # truncated
    lines.insert(2, "bad.png,a")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_unverified_bad_file_is_replaced_while_training(
    folder_with_a_bad_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = build_csv(
        CsvArgs(path=str(folder_with_a_bad_file), on_error="skip", verify=False, test_size=0, val_size=0),
        data_root=folder_with_a_bad_file.parent,
    )
    records = source.records("train")
    assert [r.ref for r in records][1] == "bad.png"
    dataset = ImageDataset(source, records, transform=lambda image: image.size)
    with caplog.at_level("WARNING", logger="sslmed.data"):
        items = [dataset[i] for i in range(len(dataset))]
        again = dataset[1]
    assert items[1] == items[2] == again  # bad.png (index 1) gave ok1.png, the next one
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "bad.png: image is corrupt or truncated" in warnings[0]


def test_evaluation_never_replaces_an_image(folder_with_a_bad_file: Path) -> None:
    source = build_csv(
        CsvArgs(path=str(folder_with_a_bad_file), on_error="skip", verify=False, test_size=0, val_size=0),
        data_root=folder_with_a_bad_file.parent,
    )
    dataset = ImageDataset(source, source.records("train"), transform=lambda image: image, substitute_unreadable=False)
    with pytest.raises(ImageLoadError, match=r"bad\.png: image is corrupt or truncated"):
        dataset[1]


def test_on_error_error_still_stops_at_the_bad_file(folder_with_a_bad_file: Path) -> None:
    source = build_csv(
        CsvArgs(path=str(folder_with_a_bad_file), verify=False, test_size=0, val_size=0),
        data_root=folder_with_a_bad_file.parent,
    )
    with pytest.raises(ImageLoadError, match=r"bad\.png"):
        ImageDataset(source, source.records("train"), transform=lambda image: image)[1]


@pytest.mark.parametrize(("options", "expected"), [((), 1), (("-q",), 1)])
def test_run_folder_is_named_once(
    options: tuple[str, ...], expected: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner logs the run folder when it starts; the command repeats it only under -q."""
    import logging

    from click.testing import CliRunner

    import sslmed.app.runner
    from sslmed.app.cli import cli

    def fake_run(*args: object, **kwargs: object) -> sslmed.app.runner.RunResult:
        logging.getLogger("sslmed.app.runner").info("run folder: %s", tmp_path)  # what run_recipe logs
        return sslmed.app.runner.RunResult(tmp_path)

    monkeypatch.setattr(sslmed.app.runner, "run_recipe", fake_run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\n")
    result = CliRunner().invoke(cli, [*options, "run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert result.output.count("run folder:") == expected


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_csv_that_is_a_fifo_or_device_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    # issue 21 (7): before, open() on a FIFO blocked for ever and /dev/zero read until MemoryError
    import os

    from sslmed.core.errors import DataError
    from sslmed.data.adapters import read_csv_rows

    table = tmp_path / "labels.csv"
    if kind == "fifo":
        os.mkfifo(table)
    else:
        table.symlink_to("/dev/zero")
    with pytest.raises(DataError, match="not a regular file"):
        read_csv_rows(table)
