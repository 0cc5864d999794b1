"""How often `sslmed run` passes through runner.py: a call trace of one tiny run.

Runs the tests' tiny two-step recipe (16 px, 2 optimiser steps per step, linear probe)
on ../shared/data under ``sys.setprofile`` and counts, for the sslmed tree on
``PYTHONPATH`` (run it once on an old checkout and once on this one to compare):

* ``runner functions``: the functions of ``sslmed/runner.py`` that ran (the places the
  path of a recipe passes through the runner);
* ``callees``: the distinct functions of other ``sslmed`` modules that runner.py
  called directly, and their modules (what it is a hub for).

    PYTHONPATH=. .venv/bin/python bench/runner_path.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main() -> None:
    import sslmed
    from sslmed.data.roots import resolve_data_root

    root = Path(sslmed.__file__).parent
    runner_file = str(root / "runner.py")
    recipe_text = (Path(__file__).resolve().parents[1] / "tests" / "conftest.py").read_text()
    tiny = recipe_text.split('TINY_RECIPE = """\\\n', 1)[1].split('"""', 1)[0]
    tiny = tiny.format(objective="simclr", steps=2).replace("{{", "{").replace("}}", "}")
    functions: set[str] = set()
    callees: set[str] = set()

    def profile(frame, event, _arg) -> None:
        if event != "call":
            return
        code, caller = frame.f_code, frame.f_back
        if code.co_filename == runner_file:
            if not code.co_name.startswith("<"):  # not the module body or a comprehension
                functions.add(code.co_name)
        elif code.co_filename.startswith(str(root)) and caller is not None and caller.f_code.co_filename == runner_file:
            callees.add(f"{Path(code.co_filename).relative_to(root)}:{code.co_name}")

    with tempfile.TemporaryDirectory() as folder:
        recipe = Path(folder) / "tiny.yaml"
        recipe.write_text(f"data_root: {resolve_data_root()}\n" + tiny)
        from sslmed.app.cli import cli

        sys.setprofile(profile)
        try:
            cli.main(["-q", "run", str(recipe), "--runs-dir", str(Path(folder) / "runs")], standalone_mode=False)
        finally:
            sys.setprofile(None)
    print(f"sslmed at {root}")
    print(f"runner functions ({len(functions)}): {', '.join(sorted(functions))}")
    modules = sorted({c.split(":")[0] for c in callees})
    print(f"callees in other sslmed modules ({len(callees)}): {', '.join(sorted(callees))}")
    print(f"modules the runner calls ({len(modules)}): {', '.join(modules)}")


if __name__ == "__main__":
    main()
