"""The decode-once image cache: same pixels as the direct path, rebuilt when the data
changes, never half-written, shared by processes, and clear errors."""

from __future__ import annotations

import errno
import json
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from sslmed.core.errors import DataError
from sslmed.data import cache as cache_module
from sslmed.data.cache import (
    COMPLETE_FILE,
    CachedImageDataset,
    cache_key,
    decode_record,
    ensure_cache,
    wants_cache,
)
from sslmed.data.readers import file_reader
from sslmed.data.sources import ImageRecord, ImageSource
from sslmed.default_plugins.datasets import CsvArgs, build_csv


@pytest.fixture(scope="module")
def covid_subset(data_dir: Path) -> ImageSource:
    """40 real covid3 radiographs (256 px PNGs of the three classes)."""
    source = build_csv(CsvArgs(path="covid3", verify=False, test_size=0, val_size=0), data_root=data_dir)
    records = source.records("train")
    return replace(source, splits={"train": records[::28][:40]})


def _tiny_folder(folder: Path, n: int = 6) -> ImageSource:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        Image.fromarray(np.full((20, 30), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
        records.append(ImageRecord(f"{i}.png", 0))
    return ImageSource("tiny", ["x"], {"train": records}, file_reader(folder), root=folder)


def test_cached_pixels_equal_the_direct_path(covid_subset, tmp_path):
    cache = ensure_cache(covid_subset, 32, 1, tmp_path, progress=False)
    records = covid_subset.records("train")
    dataset = CachedImageDataset(cache, records, as_tensor=True)
    for index in range(len(records)):
        direct = decode_record(covid_subset, records[index], 32, 1)
        assert direct.shape == (1, 32, 32)
        assert torch.equal(dataset[index][0], torch.from_numpy(direct))
        assert dataset[index][1] == records[index].label
    # the CPU path gets the same pixels as a PIL image for its per-image augmentations
    pil = CachedImageDataset(cache, records)[3][0]
    assert np.array_equal(np.asarray(pil), decode_record(covid_subset, records[3], 32, 1)[0])
    # a second call reuses the complete cache instead of building again
    assert ensure_cache(covid_subset, 32, 1, tmp_path, progress=False).folder == cache.folder


def test_workers_map_the_file_instead_of_receiving_a_copy(covid_subset, tmp_path):
    dataset = CachedImageDataset(
        ensure_cache(covid_subset, 16, 1, tmp_path, progress=False), covid_subset.records("train")
    )
    dataset[0]  # maps the array in this process
    assert isinstance(dataset._array, np.memmap)
    shipped = pickle.loads(pickle.dumps(dataset))
    assert shipped._array is None  # what a worker receives carries no pixels
    assert len(pickle.dumps(dataset)) < 20_000
    loader = torch.utils.data.DataLoader(
        CachedImageDataset(dataset.cache, dataset.records, as_tensor=True), batch_size=8, num_workers=2
    )
    assert next(iter(loader))[0].shape == (8, 1, 16, 16)


def test_a_changed_size_dataset_or_file_builds_another_cache(covid_subset, tmp_path):
    first = ensure_cache(covid_subset, 16, 1, tmp_path, progress=False).folder
    assert ensure_cache(covid_subset, 24, 1, tmp_path, progress=False).folder != first
    fewer = replace(covid_subset, splits={"train": covid_subset.records("train")[:-1]})
    assert ensure_cache(fewer, 16, 1, tmp_path, progress=False).folder != first
    tiny = _tiny_folder(tmp_path / "images")
    before = ensure_cache(tiny, 8, 1, tmp_path / "c", progress=False)
    Image.fromarray(np.full((20, 30), 255, dtype=np.uint8)).save(tmp_path / "images" / "0.png")
    os.utime(tmp_path / "images" / "0.png", ns=(1, 1))  # a file replaced in place, with another time
    after = ensure_cache(tiny, 8, 1, tmp_path / "c", progress=False)
    assert after.folder != before.folder
    assert after.array()[0].min() == 255 and before.array()[0].max() == 0


def test_an_interrupted_build_leaves_no_cache_that_looks_complete(covid_subset, tmp_path, monkeypatch):
    real, calls = cache_module.decode_record, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "decode_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_cache(covid_subset, 16, 1, tmp_path, progress=False, workers=1)
    assert not list(tmp_path.glob(f"*/{COMPLETE_FILE}"))
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # the temporary folder was removed
    monkeypatch.setattr(cache_module, "decode_record", real)
    cache = ensure_cache(covid_subset, 16, 1, tmp_path, progress=False)
    assert (cache.folder / COMPLETE_FILE).is_file() and cache.array().shape == (40, 1, 16, 16)


def test_a_cache_folder_without_its_marker_is_rebuilt(covid_subset, tmp_path):
    cache = ensure_cache(covid_subset, 16, 1, tmp_path, progress=False)
    (cache.folder / COMPLETE_FILE).unlink()
    with pytest.raises(DataError, match="not a complete"):
        cache_module.ImageCache.open(cache.folder)
    assert (ensure_cache(covid_subset, 16, 1, tmp_path, progress=False).folder / COMPLETE_FILE).is_file()


def test_a_cache_built_from_other_data_is_refused(covid_subset, tmp_path):
    cache = ensure_cache(covid_subset, 16, 1, tmp_path, progress=False)
    other = _tiny_folder(tmp_path / "images")
    with pytest.raises(DataError, match="built from other data") as error:
        ensure_cache(other, 16, 1, cache.folder, progress=False)  # cache: names this one folder
    assert str(cache.folder) in str(error.value) and "fingerprint" in str(error.value)
    assert json.loads((cache.folder / "meta.json").read_text())["key"] == cache_key(covid_subset, 16, 1)


def test_an_unwritable_cache_folder_is_a_clear_error(covid_subset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(DataError, match="not writable.*cache: off"):
        ensure_cache(covid_subset, 16, 1, blocker / "cache", progress=False)


def test_a_full_disk_is_a_clear_error_and_keeps_nothing(covid_subset, tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    with pytest.raises(DataError, match="disk filled up"):
        ensure_cache(covid_subset, 16, 1, tmp_path, progress=False)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]
    monkeypatch.undo()
    usage = type("Usage", (), {"free": 1000})
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda _path: usage)
    with pytest.raises(DataError, match="not enough disk space.*needs"):
        ensure_cache(covid_subset, 16, 1, tmp_path, progress=False)


def _build_in_process(rank: int, source: ImageSource, root: str, out: str) -> None:
    cache = ensure_cache(source, 16, 1, Path(root), progress=False)
    Path(out, f"rank{rank}").write_text(str(cache.folder))


def test_two_processes_share_one_cache(covid_subset, tmp_path):
    mp.spawn(_build_in_process, args=(covid_subset, str(tmp_path / "cache"), str(tmp_path)), nprocs=2, join=True)
    folders = {(tmp_path / f"rank{r}").read_text() for r in range(2)}
    assert len(folders) == 1  # both read the same cache
    built = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(built) == 1 and (built[0] / COMPLETE_FILE).is_file()  # built once, no leftovers


def test_auto_caches_large_file_sources_only(covid_subset):
    assert not wants_cache("auto", covid_subset, 40)
    assert wants_cache("auto", covid_subset, 22_548)
    assert wants_cache("on", covid_subset, 40) and not wants_cache("off", covid_subset, 22_548)
    in_memory = ImageSource("npz", ["x"], {"train": [ImageRecord(0)]}, lambda ref, mode="L": None)
    assert not wants_cache("auto", in_memory, 22_548)


def test_data_cache_command_builds_once_and_prints_the_folder(tiny_recipe, tmp_path):
    from click.testing import CliRunner

    from sslmed.app.cli import cli

    recipe = tiny_recipe(extra="")
    args = ["data", "cache", str(recipe), "--step", "target", "--set", "defaults.cache=on"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    folder = Path(first.stdout.strip().splitlines()[-1])
    assert (folder / COMPLETE_FILE).is_file() and folder.name.startswith("covid3-") and "-16px-1ch" in folder.name
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and again.stdout.strip().splitlines()[-1] == str(folder)
    off = CliRunner().invoke(cli, ["data", "cache", str(recipe), "--step", "target", "--set", "defaults.cache=off"])
    assert off.exit_code == 0 and "no cache (cache: off" in off.output


@pytest.mark.slow
def test_a_step_trains_from_the_cache_with_augmentation_on_the_device(tiny_recipe):
    from click.testing import CliRunner

    from sslmed.app.cli import cli

    recipe = tiny_recipe(objective="crsm", steps=1)
    text = recipe.read_text().replace(
        "augmentations: [{name: simclr}]", "augmentations: [{name: simclr}, {name: mdre}]"
    )
    recipe.write_text(text + "\n")
    sets = ["--set", "defaults.cache=on", "--set", "defaults.augment_on=device", "--set", "evaluation.train_split=val"]
    result = CliRunner().invoke(cli, ["-q", "run", str(recipe), "--runs-dir", str(recipe.parent / "runs"), *sets])
    assert result.exit_code == 0, result.output
    assert "| sslmed:target | linear |" in result.stdout


def test_augment_on_device_names_what_cannot_run_batched(tiny_recipe):
    from click.testing import CliRunner

    from sslmed.app.cli import cli

    recipe = tiny_recipe()
    sets = [
        "--set",
        "defaults.augment_on=device",
        "--set",
        "defaults.augmentations=[{name: simclr, gaussian_blur: 0.5}]",
    ]
    result = CliRunner().invoke(cli, ["run", str(recipe), "--runs-dir", str(recipe.parent / "runs"), *sets])
    assert result.exit_code != 0
    assert "augment_on: device is not possible" in result.output and "gaussian_blur" in result.output


def test_recipe_cache_setting_reads_yaml_on_and_off():
    import yaml

    from sslmed.core.recipe import StepSettings

    base = {"name": "s", "data": "d", "backbone": {"name": "b"}, "objective": {"name": "o"}}
    base["augmentations"] = [{"name": "a"}]
    for text, expected in (("on", "on"), ("off", "off"), ("auto", "auto"), ("/scratch/cache", "/scratch/cache")):
        value = yaml.safe_load(f"cache: {text}")["cache"]  # a bare on/off is a YAML boolean
        assert StepSettings.model_validate({**base, "cache": value}).cache == expected
    assert StepSettings.model_validate(base).cache == "auto" and StepSettings.model_validate(base).augment_on == "auto"


# ------------------------------------------------------------ issue 21 (6): a broken cache


def _truncate_images(folder: Path) -> None:
    images = folder / cache_module.IMAGES_FILE
    os.truncate(images, images.stat().st_size // 2)


def _corrupt_meta(folder: Path) -> None:
    (folder / cache_module.META_FILE).write_text('{"key": {"size": 16}, "refs": [')


def _edit_meta(folder: Path) -> None:
    meta = json.loads((folder / cache_module.META_FILE).read_text())
    meta["refs"] = meta["refs"][::-1]  # valid JSON, wrong rows: only the digest notices
    (folder / cache_module.META_FILE).write_text(json.dumps(meta))


def _damage_header(folder: Path) -> None:
    images = folder / cache_module.IMAGES_FILE  # found by bench/fuzz.py: a raw tokenize.TokenError
    data = images.read_bytes()
    images.write_bytes(data.replace(b"), }", b",  }", 1))  # the shape's ")" gone, same length


def _infinite_size(folder: Path) -> None:
    meta = json.loads((folder / cache_module.META_FILE).read_text())
    meta["key"]["size"] = float("inf")  # and a marker that matches: a crafted cache (raw OverflowError)
    data = json.dumps(meta).encode()
    (folder / cache_module.META_FILE).write_bytes(data)
    (folder / cache_module.COMPLETE_FILE).write_text(cache_module._marker(data))


def _refs_not_names(folder: Path) -> None:
    meta = json.loads((folder / cache_module.META_FILE).read_text())
    meta["refs"][0] = []  # found by bench/fuzz.py, with a matching marker: a raw TypeError (unhashable)
    data = json.dumps(meta).encode()
    (folder / cache_module.META_FILE).write_bytes(data)
    (folder / cache_module.COMPLETE_FILE).write_text(cache_module._marker(data))


BREAKAGES = {
    "images truncated to half": (_truncate_images, "truncated"),
    "images deleted": (lambda f: (f / cache_module.IMAGES_FILE).unlink(), "missing"),
    "meta corrupt": (_corrupt_meta, "digest"),
    "meta deleted": (lambda f: (f / cache_module.META_FILE).unlink(), "missing"),
    "meta edited": (_edit_meta, "digest"),
    "images header damaged": (_damage_header, "header"),
    "meta size infinite, digest rewritten": (_infinite_size, "not a cache description"),
    "a ref not a name, digest rewritten": (_refs_not_names, "not a cache description"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_cache_is_named_in_one_line_and_rebuilt(tmp_path, breakage, caplog):
    source = _tiny_folder(tmp_path / "images")
    cache = ensure_cache(source, 16, 1, tmp_path / "cache", progress=False)
    expected = np.array(cache.array())
    damage, words = BREAKAGES[breakage]
    damage(cache.folder)
    with pytest.raises(DataError) as error:  # before: raw ValueError / JSONDecodeError, or trusted
        cache_module.ImageCache.open(cache.folder)
    assert words in str(error.value) and "\n" not in str(error.value)
    again = ensure_cache(source, 16, 1, tmp_path / "cache", progress=False)
    assert again.folder == cache.folder and again.rebuilt_because and words in again.rebuilt_because
    assert np.array_equal(np.array(again.array()), expected)
    assert any("broken" in r.getMessage() for r in caplog.records)
    assert ensure_cache(source, 16, 1, tmp_path / "cache", progress=False).rebuilt_because is None


def test_data_cache_command_reports_a_broken_cache(tiny_recipe, tmp_path):
    from click.testing import CliRunner

    from sslmed.app.cli import cli

    recipe = tiny_recipe(extra="")
    args = ["data", "cache", str(recipe), "--step", "target", "--set", "defaults.cache=on"]
    first = CliRunner().invoke(cli, args)
    folder = Path(first.stdout.strip().splitlines()[-1])
    _truncate_images(folder)
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0 and "the cache was broken" in second.output and "truncated" in second.output
    assert cache_module.check_cache(folder) is None
