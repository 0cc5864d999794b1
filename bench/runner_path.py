"""The path of a recipe through the package: a call trace of one tiny `sslmed run`.

Runs the tests' tiny two-step recipe (16 px, 2 optimiser steps per step, linear probe)
on ../shared/data under ``sys.setprofile`` and counts, for the sslmed tree on
``PYTHONPATH`` (run it once on an old checkout and once on this one to compare):

* ``runner functions``: the functions of ``sslmed/app/runner.py`` that ran (the places the
  path of a recipe passes through the runner);
* ``callees``: the distinct functions of other ``sslmed`` modules that runner.py
  called directly, and their modules (what it is a hub for);
* ``walk``: every sslmed module the run entered, and the *climbs*: calls from a module
  into one of a higher layer (:data:`sslmed.testing.layers.LAYERS`), other than the
  registry calling a plugin's factory and Lightning calling back into a module (the two
  inversions by design). A climb that remains is a call through an object handed down
  (a base class calling its subclass, a transform given to a dataset), not an import.

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
    from sslmed.testing.layers import layer_index

    runner_file = str(root / "app" / "runner.py")
    recipe_text = (Path(__file__).resolve().parents[1] / "tests" / "conftest.py").read_text()
    tiny = recipe_text.split('TINY_RECIPE = """\\\n', 1)[1].split('"""', 1)[0]
    tiny = tiny.format(objective="simclr", steps=2).replace("{{", "{").replace("}}", "}")
    functions: set[str] = set()
    callees: set[str] = set()
    entered: set[str] = set()
    climbs: set[tuple[str, str]] = set()

    def module_of(filename: str) -> str | None:
        if not filename.startswith(str(root)):
            return None
        return "sslmed." + ".".join(Path(filename).relative_to(root).with_suffix("").parts).removesuffix(".__init__")

    def profile(frame, event, _arg) -> None:
        if event != "call":
            return
        code, caller = frame.f_code, frame.f_back
        callee_module = module_of(code.co_filename)
        if callee_module is not None and code.co_name != "<module>":  # calls, not imports
            entered.add(callee_module)
            caller_module = module_of(caller.f_code.co_filename) if caller is not None else None
            by_design = caller_module in ("sslmed.core.registry", "sslmed.core.plugins")
            if caller_module and not by_design and layer_index(callee_module) > layer_index(caller_module):
                climbs.add((f"{caller_module}:{caller.f_code.co_name}", f"{callee_module}:{code.co_name}"))
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
    print(f"walk: {len(entered)} sslmed modules entered: {', '.join(sorted(entered))}")
    print(f"climbs up a layer ({len(climbs)}): {', '.join(f'{a} -> {b}' for a, b in sorted(climbs)) or 'none'}")


if __name__ == "__main__":
    main()
