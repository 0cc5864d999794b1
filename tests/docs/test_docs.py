"""The documentation stays true: hooks documented, code blocks run, the site builds.

How the code blocks of ``docs/**/*.md`` are tested (the conventions a page follows):

* A ```` ```bash ```` block is run with ``bash -e -o pipefail`` and a ```` ```python ````
  block with this environment's Python, in the order of the site's navigation, in one
  working directory shared by all pages (as a reader who follows the docs in order
  would). That directory looks like a checkout: ``recipes/`` and ``plugins/`` are the
  repository's, and ``../shared/data`` (also ``$SSLMED_DATA``) is a small real subset
  of the shared data: 20 images per class of each folder (of distinct patients where
  there are enough), 64/32/32 images of PneumoniaMNIST.
* ``sslmed run`` is made cheap: every step trains 2 optimiser steps of batch 16 on
  16 px images and the supervised baseline 2 steps. Everything else runs as written.
  The commands run in processes forked from one that imported sslmed once (set
  ``SSLMED_DOCS_FORK=0`` to start each as its own process).
* A block preceded by ``<!-- test: skip REASON -->`` is not run (a server that does
  not stop, a GPU cluster, a package upload); the reason is required.
* A block with ``title="PATH"``: when PATH is a file of the repository, the block must
  be a verbatim excerpt of it (so the tutorial shows the real code); otherwise it is a
  file the reader creates, written to the working directory before the next block.
* ``<!-- test-setup: COMMAND -->`` runs COMMAND (bash) before the page's blocks, unless
  the same command already ran in this session, as a setup or as a line of an earlier
  page's block (e.g. a page that needs a trained run).
* A ```` ```text ```` block preceded by ``<!-- test: output -->`` shows the output of the
  block before it: each of its lines must appear in that output (stdout and stderr),
  where ``...`` stands for any text (e.g. a path or a number that differs per run).
* Other blocks (``text``, ``yaml`` without a title, ...) are shown, not run; so are the
  blocks of ``benchmarks.md`` and ``results.md``, which record the commands (GPU sweeps,
  benchmarks of minutes) that produced their numbers.

Run one page with ``pytest tests/docs/test_docs.py -k first-recipe``; pages that use an
earlier page's files then run that page's setup only.
"""

from __future__ import annotations

import csv
import inspect
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
REAL_DATA = Path(os.environ.get("SSLMED_DATA", REPO.parent / "shared" / "data"))
PER_CLASS = 20
BLOCK_TIMEOUT = 300

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
SKIP = re.compile(r"^\s*<!-- test: skip (?P<reason>\S.*?) -->\s*$")
OUTPUT = re.compile(r"^\s*<!-- test: output -->\s*$")
SETUP = re.compile(r"^\s*<!-- test-setup: (?P<command>\S.*?) -->\s*$")
RUN_LANGUAGES = {"bash", "python"}
RECORD_PAGES = {"benchmarks.md", "results.md"}  # commands that made the numbers: shown, not rerun


# ------------------------------------------------------------------- the pages


@dataclass
class Block:
    page: str
    line: int
    language: str
    title: str | None
    code: str
    skip: str | None = None
    output: bool = False


@dataclass
class Page:
    path: str
    blocks: list[Block] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)


def parse_page(path: Path) -> Page:
    """The fenced code blocks of one Markdown page, with their markers."""
    rel = path.relative_to(DOCS).as_posix()
    page = Page(rel)
    lines = path.read_text(encoding="utf-8").splitlines()
    pending_skip: str | None = None
    pending_output = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if (match := SETUP.match(line)) is not None:
            page.setup.append(match["command"])
        elif (match := SKIP.match(line)) is not None:
            pending_skip = match["reason"]
        elif OUTPUT.match(line):
            pending_output = True
        elif (match := FENCE.match(line)) is not None:
            indent, fence, info = match["indent"], match["fence"], match["info"].strip()
            language = info.split()[0].lstrip(".{").rstrip("}") if info else ""
            title = re.search(r'title="([^"]+)"', info)
            body, index = [], index + 1
            while index < len(lines) and not re.match(
                rf"^{re.escape(indent)}{fence[0]}{{{len(fence)},}}\s*$", lines[index]
            ):
                body.append(lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index].lstrip())
                index += 1
            page.blocks.append(
                Block(
                    rel,
                    index - len(body),
                    language,
                    title[1] if title else None,
                    "\n".join(body) + "\n",
                    pending_skip,
                    pending_output,
                )
            )
            pending_skip, pending_output = None, False
        elif line.strip() and not line.strip().startswith("<!--"):
            pending_skip, pending_output = None, False
        index += 1
    return page


def nav_pages() -> list[str]:
    """Markdown pages in the order of mkdocs.yml's navigation, then any others."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python", "#"))
    ordered: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, str) and node.endswith(".md"):
            ordered.append(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config["nav"])
    others = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    return ordered + [p for p in others if p not in ordered]


PAGES = [p for p in nav_pages() if (DOCS / p).is_file()]


# ------------------------------------------------------------ the working folder


def make_small_data(real: Path, dest: Path) -> None:
    """A small real subset of the shared data: same layout, links to the same files."""
    for folder in sorted(p for p in real.iterdir() if p.is_dir()):
        table = folder / "labels.csv"
        if folder.name == "samples" or not table.is_file():
            if folder.name != "pneumoniamnist":
                (dest / folder.name).symlink_to(folder)
            continue
        with open(table, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields, rows = reader.fieldnames, list(reader)
        kept, counts, seen = [], {}, set()
        patient = "patient_id" if "patient_id" in (fields or []) else None
        first = [
            r for r in rows if not patient or not r[patient] or (r[patient] not in seen and not seen.add(r[patient]))
        ]
        others = [r for r in rows if r not in first]
        for row in first + others:  # distinct patients first, so that splits have groups to share out
            key = (row["label"], row.get("split"))  # sets with official splits keep each of them
            if counts.get(key, 0) < PER_CLASS:
                counts[key] = counts.get(key, 0) + 1
                kept.append(row)
        (dest / folder.name / "images").mkdir(parents=True)
        with open(dest / folder.name / "labels.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        for row in kept:
            link = dest / folder.name / "images" / row["path"]
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(folder / "images" / row["path"])
    npz = real / "pneumoniamnist" / "pneumoniamnist.npz"
    if npz.is_file():
        arrays, small = np.load(npz), {}
        for split, count in (("train", 64), ("val", 32), ("test", 32)):
            labels = arrays[f"{split}_labels"].reshape(-1)
            chosen = np.sort(np.concatenate([np.flatnonzero(labels == c)[: count // 2] for c in (0, 1)]))
            small[f"{split}_images"] = arrays[f"{split}_images"][chosen]
            small[f"{split}_labels"] = arrays[f"{split}_labels"][chosen]
        (dest / "pneumoniamnist").mkdir()
        np.savez(dest / "pneumoniamnist" / "pneumoniamnist.npz", **small)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    """A checkout-like folder for the docs' commands, with a small real data folder."""
    if not (REAL_DATA / "covid3" / "labels.csv").is_file():
        pytest.skip(f"real data not found at {REAL_DATA} (set SSLMED_DATA)")
    root = tmp_path_factory.mktemp("docs")
    data = root / "shared" / "data"
    data.mkdir(parents=True)
    make_small_data(REAL_DATA, data)
    work = root / "sslmed"
    work.mkdir()
    for name in ("recipes", "plugins"):
        (work / name).symlink_to(REPO / name)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "SSLMED_DATA": str(data),
        "PYTHONUNBUFFERED": "1",
        "NO_MKDOCS_2_WARNING": "1",
    }
    env.pop("SSLMED_RUN_DIR", None)
    server = start_fork_server(root / "fork.sock", env) if os.environ.get("SSLMED_DOCS_FORK", "1") != "0" else None
    wrapper = bin_dir / "sslmed"
    if server is not None:
        wrapper.write_text(
            f"#!{sys.executable} -S\n"
            + CLIENT.replace("SOCKET", repr(str(root / "fork.sock"))).replace("KIND", "'sslmed'")
        )
        python_client = bin_dir / "docs-python"
        python_client.write_text(
            f"#!{sys.executable} -S\n"
            + CLIENT.replace("SOCKET", repr(str(root / "fork.sock"))).replace("KIND", "'python'")
        )
        python_client.chmod(0o755)
    else:
        wrapper.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(__file__)} --cheap-sslmed "$@"\n'
        )
    wrapper.chmod(0o755)
    yield {
        "dir": work,
        "env": env,
        "setup_done": set(),
        "python": str(bin_dir / "docs-python") if server else sys.executable,
    }
    stop_servers(work)
    if server is not None:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def stop_servers(work: Path) -> None:
    """End a server that a page started in the background (``serve.pid``) if it still runs."""
    import signal

    for pid_file in work.glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


def run_block(block: Block, work: dict) -> str:
    where = f"docs/{block.page}:{block.line}"
    if block.language == "bash":
        command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    else:
        script = work["dir"] / "_docs_block.py"
        script.write_text(block.code, encoding="utf-8")
        command = [work["python"], str(script)]
    try:
        out = subprocess.run(
            command, cwd=work["dir"], env=work["env"], capture_output=True, text=True, timeout=BLOCK_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{where}: the {block.language} block ran over {BLOCK_TIMEOUT} s:\n{block.code}")
    if out.returncode != 0:
        pytest.fail(
            f"{where}: the {block.language} block failed (exit {out.returncode}):\n{block.code}\n"
            f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}"
        )
    return out.stdout + out.stderr


def check_output(block: Block, output: str | None) -> None:
    where = f"docs/{block.page}:{block.line}"
    if output is None:
        pytest.fail(f"{where}: an output block must follow a block that runs")
    for line in block.code.splitlines():
        if not line.strip():
            continue
        pattern = ".*".join(re.escape(part) for part in line.strip().split("..."))
        if not re.search(pattern, output):
            pytest.fail(
                f"{where}: the page shows output that the command no longer prints:\n  {line.strip()}\n"
                f"--- actual output\n{output[-3000:]}"
            )


def check_excerpt(block: Block) -> None:
    real = (REPO / block.title).read_text(encoding="utf-8")
    if block.code.strip("\n") not in real:
        pytest.fail(
            f"docs/{block.page}:{block.line}: the block titled {block.title!r} is not a verbatim excerpt of that file; "
            "copy the current text of the file into the page"
        )


@pytest.mark.parametrize("name", PAGES)
def test_page_code_runs(name: str, workdir: dict) -> None:
    page = parse_page(DOCS / name)
    last_output: str | None = None
    for command in page.setup:
        if command not in workdir["setup_done"]:
            run_block(Block(name, 0, "bash", None, command), workdir)
            workdir["setup_done"].add(command)
    for block in page.blocks:
        if block.title and (REPO / block.title).is_file():
            check_excerpt(block)
        elif block.title:
            target = workdir["dir"] / block.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code, encoding="utf-8")
        elif block.output:
            check_output(block, last_output)
        elif block.language in RUN_LANGUAGES and name not in RECORD_PAGES:
            last_output = run_block(block, workdir) if block.skip is None else None
            if block.skip is None and block.language == "bash":  # a later page's setup need not repeat it
                workdir["setup_done"].update(line.strip() for line in block.code.splitlines() if line.strip())


def test_runnable_blocks_have_a_known_language():
    """A shell block must say ``bash`` (not sh/shell/console) so that it is run or skipped on purpose."""
    wrong = [
        f"docs/{b.page}:{b.line} ({b.language})"
        for p in PAGES
        for b in parse_page(DOCS / p).blocks
        if b.language in {"sh", "shell", "console", "zsh", "py", "python3"}
    ]
    assert not wrong, "use ```bash or ```python: " + ", ".join(wrong)


# ------------------------------------------------------------------- the hooks


def hookspecs() -> dict[str, inspect.Signature]:
    from sslmed.core import hookspecs as module

    return {
        name: inspect.signature(fn)
        for name, fn in vars(module).items()
        if inspect.isfunction(fn) and hasattr(fn, "sslmed_spec")
    }


def documented_hooks() -> dict[str, str]:
    """``name -> "name(arg, ...)"`` from the headings of docs/reference/hooks.md."""
    text = (DOCS / "reference" / "hooks.md").read_text(encoding="utf-8")
    return {
        m["name"]: m["signature"]
        for m in re.finditer(r"^## (?P<signature>(?P<name>\w+)\([^)]*\)) \{#\w+\}$", text, re.M)
    }


@pytest.mark.parametrize("hook", sorted(hookspecs()))
def test_every_hook_is_documented_with_its_signature(hook: str):
    documented = documented_hooks()
    expected = f"{hook}({', '.join(hookspecs()[hook].parameters)})"
    assert hook in documented, (
        f"hook {hook} is not documented in docs/reference/hooks.md (add a heading '## {expected} {{#{hook}}}')"
    )
    assert documented[hook] == expected, (
        f"docs/reference/hooks.md documents {documented[hook]}, but the hook is now {expected}"
    )
    assert f"<!-- sslmed:hookspec {hook} -->" in (DOCS / "reference" / "hooks.md").read_text(encoding="utf-8")


def test_no_documented_hook_is_gone():
    assert set(documented_hooks()) <= set(hookspecs()), set(documented_hooks()) - set(hookspecs())


# ------------------------------------------------------------ generated reference


def docs_hooks():
    sys.path.insert(0, str(DOCS))
    try:
        import hooks  # docs/hooks.py
    finally:
        sys.path.remove(str(DOCS))
    return hooks


def test_generated_reference_covers_the_code():
    from sslmed.core.plugins import get_registry

    hooks = docs_hooks()
    cli_text = hooks.render_cli()
    for name in ("run", "validate", "plugins", "list", "info", "eval", "predict"):
        assert f"## sslmed {name}\n" in cli_text
    for component in get_registry().list():
        assert f"### {component.name} {{#{component.kind}-{component.name}}}" in hooks.render_components()
    schema = hooks.render_recipe_schema()
    for key in ("init_from", "augmentations", "label_fractions", "warmup_epochs"):
        assert f"| `{key}` |" in schema


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: a broken page, link or anchor fails."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stderr[-5000:]
    assert (tmp_path / "site" / "reference" / "recipe.schema.json").is_file()
    assert "register_augmentations" in (tmp_path / "site" / "reference" / "hooks" / "index.html").read_text(
        encoding="utf-8"
    )


# ------------------------------------------------- the cheap `sslmed` of the docs


def cheap_arguments(args: list[str]) -> list[str]:
    """``sslmed run RECIPE ...`` plus ``--set`` overrides that make it train a few steps."""
    if "run" not in args:
        return args
    position = args.index("run")
    rest, recipe, overrides, index = args[position + 1 :], None, [], 0
    while index < len(rest):
        if rest[index] == "--set" and index + 1 < len(rest):
            overrides.append(rest[index + 1])
            index += 2
            continue
        if rest[index] in ("--runs-dir", "--resume") and index + 1 < len(rest) and not rest[index + 1].startswith("-"):
            index += 2
            continue
        if not rest[index].startswith("-") and recipe is None:
            recipe = rest[index]
        index += 1
    if recipe is None or not Path(recipe).is_file():
        return args
    from sslmed.core.recipe import load_raw

    data, _lines = load_raw(recipe, overrides)
    extra = []
    for index, _step in enumerate(data.get("steps") or []):
        extra += [
            f"steps.{index}.max_steps=2",
            f"steps.{index}.batch_size=16",
            f"steps.{index}.epochs=1",
            f"steps.{index}.num_workers=0",
            f"steps.{index}.image_size=16",
        ]
    if data.get("evaluation"):
        extra += ["evaluation.supervised.max_steps=2", "evaluation.supervised.epochs=1"]
    chosen = {override.split("=", 1)[0].strip() for override in overrides}
    extra = [item for item in extra if item.split("=", 1)[0] not in chosen]  # what the page sets, stays
    return args + [item for pair in zip(["--set"] * len(extra), extra, strict=False) for item in pair]


# ------------------------------------------------------------------ the fork server
#
# Importing sslmed with torch, Lightning and lightly takes seconds, and the docs run
# dozens of commands. A server process imports it all once; for each command it forks
# a child that runs ``sslmed ARGS`` (or a Python script) with the caller's working
# folder, environment and standard streams, and reports the exit status. The commands
# run exactly as the installed ``sslmed`` runs them, minus the start-up time.

CLIENT = """\
import json, os, signal, socket, sys
connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
connection.connect(SOCKET)
request = json.dumps({"kind": KIND, "argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
socket.send_fds(connection, [len(request).to_bytes(8, "big") + request], [0, 1, 2])
stream = connection.makefile("r")
child = int(stream.readline() or 0)
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, lambda signum, frame: os.kill(child, signum) if child else None)
status = stream.readline()
sys.exit(int(status) if status.strip() else 1)
"""


def start_fork_server(path: Path, env: dict) -> subprocess.Popen | None:
    server = subprocess.Popen(
        [sys.executable, __file__, "--fork-server", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if server.stdout.readline().strip() != "ready":
        server.kill()
        return None
    return server


def _receive(connection) -> tuple[dict, list[int]]:
    import socket

    message, fds, _flags, _address = socket.recv_fds(connection, 1 << 20, 3)
    size = int.from_bytes(message[:8], "big")
    data = message[8:]
    while len(data) < size:
        data += connection.recv(size - len(data))
    return __import__("json").loads(data), fds


def _run_request(request: dict) -> int:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request["kind"] == "python":
        import runpy
        import traceback

        sys.argv = list(request["argv"])
        sys.path[0] = str(Path(sys.argv[0]).resolve().parent)
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as exit:
            return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        except BaseException:
            traceback.print_exc()
            return 1
        return 0
    from sslmed.app.cli import cli

    arguments = cheap_arguments(list(request["argv"]))
    sys.argv = ["sslmed", *arguments]
    try:
        cli.main(args=arguments, prog_name="sslmed")
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    return 0


def fork_server(path: str) -> None:
    import signal
    import socket

    import click
    import lightning  # noqa: F401  (imported once, here, for every command)
    import sklearn.linear_model  # noqa: F401
    import torch  # noqa: F401

    from sslmed.app.cli import cli
    from sslmed.core.plugins import get_registry

    cli.list_commands(click.Context(cli))  # loads the plugins' commands once, before forking
    get_registry()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children report to their client themselves
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(5)
    parent = os.getppid()
    print("ready", flush=True)
    while True:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the test run is gone: so is the server
                os._exit(0)
            continue
        connection.settimeout(None)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            status = 1
            try:
                request, fds = _receive(connection)
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                connection.sendall(f"{os.getpid()}\n".encode())
                status = _run_request(request)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    connection.sendall(f"{status}\n".encode())
                finally:
                    os._exit(status if isinstance(status, int) and 0 <= status < 256 else 1)
        connection.close()


if __name__ == "__main__" and sys.argv[1:2] == ["--fork-server"]:
    fork_server(sys.argv[2])

if __name__ == "__main__" and sys.argv[1:2] == ["--cheap-sslmed"]:
    arguments = cheap_arguments(sys.argv[2:])
    executable = Path(sys.executable).parent / "sslmed"
    os.execv(str(executable), [str(executable), *arguments])
