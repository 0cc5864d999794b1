"""Property-based fuzzing of what sslmed reads from outside: recipes, ``--set`` values,
image files, uploads to the web page, and the surfaces of issue 21: image-cache files,
model metadata, archive members and ``POST /api/classify`` bodies (hypothesis).

Each target feeds generated input to the real code path and checks the documented
behaviour: a recipe either validates or fails with exit status 2 and one message (no
traceback); ``--set`` values likewise; image bytes (real PNG/JPEG/DICOM files from
``../shared/data/samples``, mutated) either load or raise ``ImageLoadError``; an
upload either classifies or raises the page's ``DemoError``; a cache folder with a
mutated ``meta.json`` / ``images.npy`` / marker either opens (and every row reads) or
raises ``DataError``; a mutated ``model.json`` either loads (and predicts finite
probabilities) or raises ``CheckpointError``; a mutated zip/tar either opens (and every
member reads) or raises ``DataError``; a random or mutated body to ``/api/classify``
gets 200, 400 or 413 with a JSON message, never a 500. Memory is checked too: the
process's peak RSS may grow by at most ``MEMORY_BOUND_MB`` over a whole target.

The bounded version runs in CI (``tests/bench/test_fuzz.py``); this script runs the same
targets longer and prints the cases tried and the failures, for docs/benchmarks.md:

    .venv/bin/python bench/fuzz.py --examples 2000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sslmed.data.roots import resolve_data_root

DATA = resolve_data_root()
SAMPLES = DATA / "samples"
MEMORY_BOUND_MB = 1024

# ------------------------------------------------------------------ strategies

RECIPE_WORDS = ["name", "data", "steps", "evaluation", "defaults", "extends", "backbone", "objective"]
RECIPE_WORDS += ["augmentations", "epochs", "lr", "optimizer", "batch_size", "image_size", "seed", "init_from"]
COMPONENTS = ["resnet18", "simclr", "csv", "image_folder", "crsm", "adamw", "../..", ".", ""]
keys = st.one_of(st.sampled_from(RECIPE_WORDS), st.text(max_size=12))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(COMPONENTS),
    st.text(max_size=30),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=6)),
    max_leaves=40,
)


def _valid_recipe() -> dict[str, Any]:
    return {
        "name": "fuzz",
        "data": {"images": {"name": "image_folder", "path": "/nowhere"}},
        "steps": [
            {
                "name": "one",
                "data": "images",
                "backbone": {"name": "resnet18"},
                "objective": {"name": "simclr"},
                "augmentations": [{"name": "simclr"}],
            }
        ],
    }


@st.composite
def recipe_texts(draw: st.DrawFn) -> str:
    """YAML text: a random document, a valid recipe with random parts replaced, or raw text."""
    kind = draw(st.sampled_from(["document", "mutated", "text", "anchors"]))
    if kind == "document":
        return yaml.safe_dump(draw(documents), allow_unicode=True)
    if kind == "mutated":
        recipe = _valid_recipe()
        step = recipe["steps"][0]
        step[draw(st.sampled_from(["epochs", "batch_size", "image_size", "seed", "name", "optimizer"]))] = draw(
            documents
        )
        recipe[draw(st.sampled_from(["name", "data", "evaluation", "description"]))] = draw(documents)
        return yaml.safe_dump(recipe, allow_unicode=True)
    if kind == "anchors":  # nested aliases, the bomb's shape at random sizes
        width, depth = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        lines = ["name: fuzz", "a0: &a0 [" + ", ".join(["x"] * width) + "]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, depth)]
        return "\n".join(lines + [f"steps: *a{depth - 1}"]) + "\n"
    return draw(st.text(max_size=300))


overrides = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda key, value: f"{key}={value}",
        st.sampled_from(["steps.0.epochs", "steps.0.optimizer.lr", "name", "steps.0", "data.images.path", "steps.9.x"]),
        st.one_of(st.text(max_size=40), documents.map(lambda d: yaml.safe_dump(d, default_flow_style=True).strip())),
    ),
)


def sample_files() -> dict[str, bytes]:
    """Real sample radiographs (PNG, JPEG) and one DICOM made from a PNG."""
    files = {p.name: p.read_bytes() for p in sorted(SAMPLES.glob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    if files:
        files["sample.dcm"] = _dicom_from(next(p for p in sorted(SAMPLES.glob("*.png"))))
    return files


def _dicom_from(png: Path) -> bytes:
    """A 12-bit DICOM (in 16-bit words, with a window) of a real radiograph."""
    from PIL import Image

    from sslmed.testing.dicom import dicom_bytes, dicom_dataset

    pixels = np.asarray(Image.open(png).convert("L").resize((128, 128))).astype(np.uint16) * 16
    ds = dicom_dataset(*pixels.shape, bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    return dicom_bytes(ds)


@st.composite
def mutated_files(draw: st.DrawFn, files: dict[str, bytes]) -> tuple[str, bytes]:
    """A real file with a few random edits: flipped bytes, a cut, an insertion, a header field."""
    name = draw(st.sampled_from(sorted(files)))
    data = bytearray(files[name])
    for _ in range(draw(st.integers(1, 6))):
        edit = draw(st.sampled_from(["flip", "cut", "insert", "head"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if edit == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif edit == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif edit == "insert":
            data[position:position] = draw(st.binary(max_size=64))
        elif edit == "head" and len(data) > 400:  # where sizes and header fields live
            spot = draw(st.integers(0, 400))
            data[spot : spot + 4] = draw(st.binary(min_size=4, max_size=4))
    return name, bytes(data)


def mutate(draw: st.DrawFn, data: bytes, head: int = 400) -> bytes:
    """``data`` with a few random edits (as :func:`mutated_files`)."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        edit = draw(st.sampled_from(["flip", "cut", "insert", "head"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if edit == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif edit == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif edit == "insert":
            data[position:position] = draw(st.binary(max_size=64))
        elif edit == "head" and data:
            spot = draw(st.integers(0, min(head, len(data) - 1)))
            data[spot : spot + 4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


CACHE_REFS = ["a.png", "b.png", "c.png"]


def cache_files() -> dict[str, bytes]:
    """The three files of a sound image cache of 3 real 8x8 images (meta, images, marker)."""
    from sslmed.data import cache

    pixels = np.stack([np.asarray(img) for img in _tiny_images(len(CACHE_REFS))])[:, None]
    out = io.BytesIO()
    np.save(out, pixels)
    meta = json.dumps({"key": {"size": 8, "channels": 1, "data": "fuzz"}, "refs": CACHE_REFS}).encode()
    return {cache.META_FILE: meta, cache.IMAGES_FILE: out.getvalue(), cache.COMPLETE_FILE: cache._marker(meta).encode()}


def _tiny_images(n: int) -> list[Any]:
    from PIL import Image

    pngs = sorted(SAMPLES.glob("*.png"))[:n] or []
    return [Image.open(p).convert("L").resize((8, 8)) for p in pngs] + [Image.new("L", (8, 8))] * (n - len(pngs))


@st.composite
def mutated_caches(draw: st.DrawFn, files: dict[str, bytes]) -> dict[str, bytes | None]:
    """The cache's files with one or more mutated, truncated or missing; ``meta.json`` edits
    either keep the stale digest or come with a marker that matches them (a crafted cache)."""
    from sslmed.data import cache

    out: dict[str, bytes | None] = dict(files)
    for name in draw(st.lists(st.sampled_from(sorted(files)), min_size=1, max_size=3, unique=True)):
        how = draw(
            st.sampled_from(
                ["mutate", "truncate", "missing", "json"]
                if name == cache.META_FILE
                else ["mutate", "truncate", "missing"]
            )
        )
        if how == "missing":
            out[name] = None
        elif how == "truncate":
            out[name] = files[name][: draw(st.integers(0, len(files[name])))]
        elif how == "json":  # a meta.json that parses, with random values where the key and refs are
            meta = json.loads(files[name])
            meta[draw(st.sampled_from(["key", "refs", "extra"]))] = draw(documents)
            if isinstance(meta.get("key"), dict) and draw(st.booleans()):
                meta["key"][draw(st.sampled_from(["size", "channels"]))] = draw(documents)
            out[name] = json.dumps(meta, allow_nan=True).encode()
        else:
            out[name] = mutate(draw, files[name], head=128)
    if out[cache.META_FILE] is not None and draw(st.booleans()):
        out[cache.COMPLETE_FILE] = cache._marker(out[cache.META_FILE]).encode()  # digest matches the edit
    return out


@st.composite
def mutated_model_meta(draw: st.DrawFn, meta: bytes) -> bytes:
    """``model.json`` with random values in its fields, or its bytes edited, or nested."""
    how = draw(st.sampled_from(["field", "field", "bytes", "nested"]))
    if how == "bytes":
        return mutate(draw, meta)
    if how == "nested":
        depth = draw(st.integers(1, 5000))
        return b'{"format": 1, "classes": ' + b"[" * depth + b"]" * depth + b"}"
    value = json.loads(meta)
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(sorted(value) + ["calibration", "ood", "task", "extras", "x"]))
        if field in ("calibration", "ood", "backbone") and isinstance(value.get(field), dict) and draw(st.booleans()):
            inner = value[field]
            inner[draw(st.sampled_from(sorted(inner) + ["x"]))] = draw(documents)
        else:
            value[field] = draw(documents)
    return json.dumps(value, allow_nan=True).encode()


def archive_files() -> dict[str, bytes]:
    """Small real archives (zip: stored, deflate, bzip2, lzma; tar, tar.gz, tar.bz2, tar.xz)
    of two real radiographs and a CSV."""
    import tarfile
    import zipfile

    members = {"set/images/a.png": b"", "set/images/b.jpg": b"", "set/labels.csv": b"path,label\na.png,x\n"}
    pngs, jpgs = sorted(SAMPLES.glob("*.png")), sorted(SAMPLES.glob("*.jp*g"))
    if pngs:
        members["set/images/a.png"] = pngs[0].read_bytes()[:200_000]
    if jpgs:
        members["set/images/b.jpg"] = jpgs[0].read_bytes()[:200_000]
    found = {}
    for label, method in [
        ("stored", zipfile.ZIP_STORED),
        ("deflate", zipfile.ZIP_DEFLATED),
        ("bzip2", zipfile.ZIP_BZIP2),
        ("lzma", zipfile.ZIP_LZMA),
    ]:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", method) as z:
            for name, data in members.items():
                z.writestr(name, data)
        found[f"{label}.zip"] = out.getvalue()
    for mode in ["", "gz", "bz2", "xz"]:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode=f"w:{mode}") as t:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        found[f"archive.tar{'.' + mode if mode else ''}"] = out.getvalue()
    return found


@st.composite
def mutated_archives(draw: st.DrawFn, files: dict[str, bytes]) -> tuple[str, bytes]:
    """A real archive with random edits, anywhere or near its headers (both ends of a zip)."""
    name = draw(st.sampled_from(sorted(files)))
    data = files[name]
    if draw(st.booleans()):
        return name, mutate(draw, data, head=600)
    tail = bytearray(data)  # the zip central directory and end record live at the end
    for _ in range(draw(st.integers(1, 4))):
        spot = len(tail) - 1 - draw(st.integers(0, min(300, len(tail) - 1)))
        tail[spot] = draw(st.integers(0, 255))
    return name, bytes(tail)


UPLOAD_TYPES = [None, "image/png", "application/octet-stream", "multipart/form-data; boundary=fuzz", "text/plain"]


@st.composite
def upload_requests(draw: st.DrawFn, files: dict[str, bytes]) -> tuple[str, bytes, str | None, bool]:
    """(name, body, content type, chunked): random bytes, a mutated real file, or a multipart form."""
    kind = draw(st.sampled_from(["random", "mutated", "multipart"]))
    if kind == "random":
        body = draw(st.binary(max_size=4096))
    else:
        _, body = draw(mutated_files(files))
    name = draw(st.one_of(st.sampled_from(sorted(files)), st.text(max_size=40)))
    ctype = draw(st.sampled_from(UPLOAD_TYPES))
    if kind == "multipart":
        ctype = "multipart/form-data; boundary=fuzz"
        field = draw(st.sampled_from(["file", "other"]))
        body = (
            b'--fuzz\r\nContent-Disposition: form-data; name="' + field.encode() + b'"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + body + b"\r\n--fuzz--\r\n"
        )
        if draw(st.booleans()):
            body = mutate(draw, body, head=120)
    return name, body, ctype, draw(st.booleans())


# ---------------------------------------------------------------------- targets


def check_recipe_text(text: str, folder: Path) -> None:
    """``sslmed validate --no-data`` on the text: exit 0 or 2, one message, no traceback."""
    from click.testing import CliRunner

    from sslmed.app.cli import cli

    path = folder / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    result = CliRunner().invoke(cli, ["validate", "--no-data", str(path)])
    assert result.exit_code in (0, 2), (result.exit_code, result.output[-500:])
    assert "Traceback" not in result.output, result.output[-800:]
    if result.exit_code == 2:
        assert result.output.startswith("Error: "), result.output[:300]


def check_override(text: str, folder: Path) -> None:
    """``--set TEXT`` on a valid recipe: validates or UsageError/RecipeError, nothing else."""
    from sslmed.core.errors import UsageError
    from sslmed.core.plugins import get_registry
    from sslmed.core.recipe import load_recipe

    path = folder / "valid.yaml"
    if not path.is_file():
        path.write_text(yaml.safe_dump(_valid_recipe()))
    try:
        load_recipe(path, get_registry(), (text,))
    except UsageError:  # RecipeError is one
        pass


def check_image_bytes(item: tuple[str, bytes], folder: Path) -> None:
    """``load_image`` on a mutated file: an image or ImageLoadError."""
    from sslmed.core.errors import ImageLoadError
    from sslmed.data.imaging import load_image

    name, data = item
    path = folder / name
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:  # no warning may reach the user either
        warnings.simplefilter("always")
        try:
            image = load_image(path)
            assert image.mode == "L" and max(image.size) <= 2048
        except ImageLoadError as exc:
            assert name in str(exc)
    assert not caught, [str(w.message) for w in caught]


def check_upload(item: tuple[str, bytes], folder: Path, service: Any) -> None:
    """The page's handlers on an uploaded file: probabilities or DemoError."""
    from sslmed.serving.web.service import DemoError

    name, data = item
    path = folder / name
    path.write_bytes(data)
    try:
        probabilities = service.predict(str(path))
        assert abs(sum(probabilities.values()) - 1) < 1e-3
    except DemoError as exc:
        assert name in str(exc) or "upload" in str(exc)


def check_cache_files(files: dict[str, bytes | None], folder: Path) -> None:
    """``ImageCache.open`` on the files: a cache whose every row reads, or DataError."""
    from sslmed.core.errors import DataError
    from sslmed.data.cache import ImageCache, check_cache
    from sslmed.data.sources import ImageRecord

    where = folder / "cache"
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir()
    for name, data in files.items():
        if data is not None:
            (where / name).write_bytes(data)
    problem = check_cache(where)
    assert problem is None or isinstance(problem, str)
    try:
        opened = ImageCache.open(where)
    except DataError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert problem is None
    array = opened.array()
    for ref in opened.meta["refs"]:
        row = opened.row_of(ImageRecord(ref))
        assert array[row].shape == tuple(array.shape[1:]) and int(array[row].sum()) >= 0


def check_model_meta(meta: bytes, folder: Path, export: Path, image: Any) -> None:
    """``Predictor`` on an export whose ``model.json`` is ``meta``: it predicts finite
    probabilities that sum to 1 (or each in [0, 1] for multi-label), or CheckpointError."""
    from sslmed.core.errors import CheckpointError
    from sslmed.serving.predict import Predictor

    where = folder / "model"
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir()
    for path in export.iterdir():
        if path.name != "model.json":
            os.link(path, where / path.name)
    (where / "model.json").write_bytes(meta)
    try:
        predictor = Predictor(where, device="cpu")
    except CheckpointError as exc:
        assert str(exc)
        return
    result = predictor.analyse_images([image])[0]
    values = list(result.probabilities.values())
    assert values and all(np.isfinite(v) and 0 <= v <= 1 for v in values), result.probabilities
    if predictor.task.name != "multilabel":
        assert abs(sum(values) - 1) < 1e-3, result.probabilities


def check_archive(item: tuple[str, bytes], folder: Path) -> None:
    """``open_archive`` on a mutated archive and every member read: bytes or DataError."""
    from sslmed.core.errors import DataError
    from sslmed.data.fetch.unpack import MAX_MEMBER_BYTES, open_archive

    name, data = item
    path = folder / name
    path.write_bytes(data)
    try:
        with open_archive(path) as archive:
            for member in archive.members:
                assert len(archive.read(member)) <= MAX_MEMBER_BYTES
    except DataError as exc:
        assert "\n" not in str(exc)


def upload_client(service: Any) -> Any:
    """A Starlette test client of ``/api/classify`` behind the server's ``UploadLimit``."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from sslmed.serving.web.api import UploadLimit, api_routes

    app = Starlette(routes=api_routes(service))
    limit = int(2 * service.max_upload_mb * 1e6 + 1e6)
    return TestClient(UploadLimit(app, limit, service.max_upload_mb), raise_server_exceptions=True)


def check_api_upload(item: tuple[str, bytes, str | None, bool], client: Any) -> None:
    """``POST /api/classify``: 200 with probabilities, or 400/413 with a JSON message."""
    name, body, ctype, chunked = item
    headers = {"content-type": ctype} if ctype else {}
    content: Any = iter([body[: len(body) // 2], body[len(body) // 2 :]]) if chunked else body
    answer = client.post("/api/classify", params={"name": name}, content=content, headers=headers)
    assert answer.status_code in (200, 400, 413), (answer.status_code, answer.text[:300])
    if answer.headers.get("content-type", "").startswith("application/json"):
        value = answer.json()
        if answer.status_code == 200:
            assert abs(sum(value["probabilities"].values()) - 1) < 1e-3
        else:
            assert value["error"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_target(
    name: str, strategy: st.SearchStrategy, check: Callable[[Any], None], examples: int, seed: int | None = 0
) -> dict[str, Any]:
    """Run ``check`` on ``examples`` generated inputs; count cases and failures (all of them)."""
    counts = {"target": name, "cases": 0, "failures": 0, "first_failure": ""}
    before = peak_rss_mb()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed is not None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def target(value: Any) -> None:
        counts["cases"] += 1
        try:
            check(value)
        except Exception:
            counts["failures"] += 1
            if not counts["first_failure"]:
                counts["first_failure"] = f"{value!r:.200} -> {traceback.format_exc(limit=3)[-600:]}"

    started = time.perf_counter()
    target()
    counts["seconds"] = time.perf_counter() - started
    counts["rss_growth_mb"] = peak_rss_mb() - before
    return counts


def targets(folder: Path) -> list[tuple[str, st.SearchStrategy, Callable[[Any], None]]]:
    """Every fuzz target, with its input strategy, writing its files under ``folder``."""
    files = sample_files()
    found = [
        ("recipe YAML (validate)", recipe_texts(), lambda text: check_recipe_text(text, folder)),
        ("--set values", overrides, lambda text: check_override(text, folder)),
    ]
    if files:
        service = _service(folder)
        found += [
            ("image bytes (load_image)", mutated_files(files), lambda item: check_image_bytes(item, folder)),
            ("uploads (web page handler)", mutated_files(files), lambda item: check_upload(item, folder, service)),
        ]
        client = upload_client(service)
        found.append(
            ("upload bodies (POST /api/classify)", upload_requests(files), lambda i: check_api_upload(i, client))
        )
        export, image = _small_export(folder), _tiny_images(1)[0].resize((64, 64))
        meta = (export / "model.json").read_bytes()
        found.append(
            ("model.json (Predictor)", mutated_model_meta(meta), lambda m: check_model_meta(m, folder, export, image))
        )
    found += [
        ("image cache files (ImageCache.open)", mutated_caches(cache_files()), lambda f: check_cache_files(f, folder)),
        ("archive members (open_archive)", mutated_archives(archive_files()), lambda i: check_archive(i, folder)),
    ]
    return found


def _small_export(folder: Path) -> Path:
    """A small classifier export (random ResNet-18 at 32 px, trust: temperature and OOD score)."""
    from sslmed.testing.models import make_model_export

    return make_model_export(folder / "small-model", DATA, arch="resnet18", small_input=True, image_size=32)


def _service(folder: Path) -> Any:
    """The web page's handlers over a small classifier export (random ResNet-18, 64 px)."""
    from sslmed.serving.predict import Predictor
    from sslmed.serving.web.service import DemoService
    from sslmed.testing.models import make_model_export

    model = make_model_export(folder / "model", DATA, arch="resnet18", small_input=False, image_size=64, trust=False)
    return DemoService(Predictor(model, device="cpu"), max_upload_mb=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="cases per target")
    parser.add_argument("--seed", type=int, default=None, help="derandomised run (default: random)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="sslmed-fuzz-") as temp:
        rows = [run_target(name, s, check, args.examples, args.seed) for name, s, check in targets(Path(temp))]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), load average {load:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
    )
    print("| target | cases | failures | seconds | peak RSS growth (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['cases']} | {r['failures']} | {r['seconds']:.0f} | {r['rss_growth_mb']:.0f} |")
    for r in rows:
        if r["failures"]:
            print(f"\nfirst failure of {r['target']}: {r['first_failure']}")


if __name__ == "__main__":
    main()
