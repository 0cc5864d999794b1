"""Hostile recipes: YAML bombs, deep nesting, duplicate keys, binary files, bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslmed.app.cli import cli
from sslmed.core.errors import RecipeError, UsageError
from sslmed.core.plugins import get_registry
from sslmed.core.recipe import MAX_YAML_DEPTH, load_raw, load_recipe, parse_override
from sslmed.testing.recipes import ONE_STEP

GOOD = ONE_STEP


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: ``width ** levels`` values from a few hundred bytes."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines)


def write(tmp_path: Path, text: str | bytes, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def problems(path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(RecipeError) as error:
        load_recipe(path, get_registry(), overrides)
    return error.value.problems


def test_recipes_may_still_use_anchors_and_aliases(tmp_path: Path) -> None:
    text = GOOD + "  - name: second\n    data: images\n    init_from: first\n    backbone: *net\n"
    text += "    objective: {name: simclr}\n    augmentations: [{name: simclr}]\n"
    recipe = load_recipe(write(tmp_path, text), get_registry())
    assert recipe.steps[1].backbone.spec() == {"name": "resnet18"}


def test_alias_bomb_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + billion_laughs() + "\nevaluation: *a8\n")  # a5 (line 16): 9**6 values
    assert problems(path) == [
        f"{path.resolve()}:16: invalid YAML: aliases expand to more than 100,000 values; a recipe needs far fewer"
    ]


def test_alias_bomb_through_validate_is_fast_and_small(tmp_path: Path) -> None:
    """The CLI answers in one line with exit 2, in a process that stays small."""
    path = write(tmp_path, "name: x\n" + billion_laughs() + "\nsteps: *a8\n")
    code = (
        "import resource, sys\n"
        "from click.testing import CliRunner\n"
        "from sslmed.app.cli import cli\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "result = CliRunner().invoke(cli, ['validate', '--no-data', sys.argv[1]])\n"
        "print(result.exit_code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
        "print(result.output)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    exit_code, grown_kb = map(int, out.stdout.split("\n", 1)[0].split())
    assert exit_code == 2
    assert "aliases expand to more than 100,000 values" in out.stdout
    assert grown_kb < 50_000, f"validating an alias bomb grew the process by {grown_kb / 1e3:.0f} MB"


def test_self_referencing_alias_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "name: x\nsteps: &s [*s]\n")) == [
        f"{(tmp_path / 'r.yaml').resolve()}:2: invalid YAML: an alias refers to itself"
    ]
    deep = write(tmp_path, "name: x\nsteps: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml")
    assert problems(deep) == [f"{deep.resolve()}:2: invalid YAML: nested more than {MAX_YAML_DEPTH} levels deep"]


def test_bombs_through_set_are_usage_errors() -> None:
    bomb = (
        "["
        + ",".join(
            ["&a [1,1,1,1,1,1,1,1,1]"]
            + [f"&{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdef", "bcdefg", strict=True)]
        )
        + "]"
    )
    with pytest.raises(UsageError, match=r"--set steps.0.epochs: the value is refused: aliases expand to more than"):
        parse_override("steps.0.epochs=" + bomb)
    with pytest.raises(UsageError, match=r"--set steps: the value is refused: nested more than 64 levels deep"):
        parse_override("steps=" + "[" * 3000 + "]" * 3000)
    assert parse_override("steps.0.name=a: b: c") == (["steps", 0, "name"], "a: b: c")  # not YAML: kept as text


def test_duplicate_keys_are_named_with_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    epochs: 2\n", "    epochs: 2\n    epochs: 3\n"))
    assert problems(path) == [f"{path.resolve()}:11: invalid YAML: key 'epochs' is given twice (first on line 10)"]


def test_binary_recipe_is_refused_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"name: x\n\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    assert problems(path) == [f"{path.resolve()}:2: not a text file (byte 8 is not UTF-8): a recipe is YAML text"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("epochs: true", "steps[0].epochs: Value error, expected a number, got the boolean true"),
        ("optimizer: {lr: .inf}", "steps[0].optimizer.lr: Input should be a finite number"),
        ("optimizer: {lr: .nan}", "steps[0].optimizer.lr: Input should be greater than 0 (got nan)"),
        ("batch_size: yes", "steps[0].batch_size: Value error, expected a number, got the boolean true"),
        ("name: ../../elsewhere", "steps[0].name: String should match pattern"),
    ],
)
def test_values_that_pydantic_would_coerce_are_refused(tmp_path: Path, line: str, message: str) -> None:
    key = line.split(":")[0]
    text = (
        GOOD.replace("    epochs: 2\n", f"    {line}\n")
        if key != "name"
        else GOOD.replace("  - name: first", f"  - {line}")
    )
    found = problems(write(tmp_path, text))
    assert any(message in p for p in found), found


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "x" * 101])
def test_recipe_name_must_be_a_folder_name_inside_the_runs_folder(tmp_path: Path, name: str) -> None:
    found = problems(write(tmp_path, GOOD.replace("name: good", f"name: '{name}'")))
    assert any("name: " in p and "must be a folder name" in p for p in found), found


def test_set_errors_point_at_the_set_option_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    found = problems(path, ("steps.0.epochs=true", "steps.0.optimizer.lr=-1"))
    assert (
        "--set steps.0.epochs=true steps[0].epochs: Value error, expected a number, got the boolean true (got True)"
        in found
    )
    assert any(p.startswith("--set steps.0.optimizer.lr=-1 steps[0].optimizer.lr:") for p in found), found
    data, lines = load_raw(path, ("steps.0.epochs=3",))
    assert data["steps"][0]["epochs"] == 3 and lines.lookup(("steps", 0, "epochs")) == ("--set steps.0.epochs=3", 0)


def test_a_file_that_is_not_a_recipe_is_not_echoed(tmp_path: Path) -> None:
    lines = [f"user{i}:$6$secret{i}:20228:0:99999:7:::" for i in range(40)]
    path = write(tmp_path, "\n".join(lines) + "\n", "shadow")
    result = CliRunner().invoke(cli, ["validate", "--no-data", str(path)])
    assert result.exit_code == 2
    assert "secret" not in result.output and "user1" not in result.output
    assert "not an sslmed recipe: none of its 40 top-level keys is a recipe key" in result.output


def test_many_problems_are_capped_in_the_message(tmp_path: Path) -> None:
    text = GOOD + "".join(f"unknown{i}: 1\n" for i in range(30))
    with pytest.raises(RecipeError) as error:
        load_recipe(write(tmp_path, text), get_registry())
    assert len(error.value.problems) == 30
    assert str(error.value).count("unknown key") == 20 and "... and 10 more" in str(error.value)


def test_an_unreadable_recipe_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD)

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)  # as root, chmod 0 would not stop a read
    with pytest.raises(UsageError, match=r"recipe file cannot be read: .*r\.yaml \(Permission denied\)"):
        load_recipe(path, get_registry())


@pytest.mark.parametrize("key", ["/tmp/x", "../x", "../../../x", "a/b", ".hidden", "a\\b"])
def test_data_keys_become_file_names_so_they_must_be_names(tmp_path: Path, key: str) -> None:
    # issue 21 (4): RunDir.split_file / skipped_file join the data key into a path
    text = GOOD.replace("  images:", f"  {key!r}:").replace("data: images", f"data: {key!r}")
    found = problems(write(tmp_path, text))
    assert any("data" in p and "name" in p for p in found), found
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "r.yaml")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
