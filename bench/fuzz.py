"""Property-based fuzzing of what sslmed reads from outside: recipes, ``--set`` values,
image files and uploads to the web page (hypothesis).

Each target feeds generated input to the real code path and checks the documented
behaviour: a recipe either validates or fails with exit status 2 and one message (no
traceback); ``--set`` values likewise; image bytes (real PNG/JPEG/DICOM files from
``../shared/data/samples``, mutated) either load or raise ``ImageLoadError``; an
upload either classifies or raises the page's ``DemoError``. Memory is checked too: the
process's peak RSS may grow by at most ``MEMORY_BOUND_MB`` over a whole target.

The bounded version runs in CI (``tests/bench/test_fuzz.py``); this script runs the same
targets longer and prints the cases tried and the failures, for docs/benchmarks.md:

    .venv/bin/python bench/fuzz.py --examples 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
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
    return found


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
