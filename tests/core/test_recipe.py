"""Recipe validation: every problem at once, with file, line and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from sslmed.core.errors import RecipeError, UsageError
from sslmed.core.plugins import get_registry
from sslmed.core.recipe import apply_override, load_recipe

GOOD = """\
name: good
data:
  images: {name: image_folder, path: /nowhere}
steps:
  - name: first
    data: images
    backbone: {name: resnet18}
    objective: {name: simclr, temperature: 0.1}
    augmentations: [{name: simclr}]
  - name: second
    data: images
    init_from: first
    backbone: {name: resnet18}
    objective: {name: simclr}
    augmentations: [{name: simclr}]
evaluation:
  data: images
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_recipe_loads(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD), get_registry())
    assert [s.name for s in recipe.steps] == ["first", "second"]
    assert recipe.steps[0].objective.spec() == {"name": "simclr", "temperature": 0.1}
    assert recipe.probed_step().name == "second"


def test_every_problem_is_reported_at_once_with_lines(tmp_path):
    text = (
        GOOD.replace("temperature: 0.1", "temprature: 0.1")
        .replace("{name: resnet18}\n    objective: {name: simclr}", "{name: resnet81}\n    objective: {name: simclr}")
        .replace("epochs", "x")
    )
    text = text.replace("  - name: second\n", "  - name: second\n    epochs: -3\n    batchsize: 8\n")
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, get_registry())
    problems = info.value.problems
    joined = "\n".join(problems)
    assert f"{path}:8 steps[0].objective.temprature: unknown key; did you mean temperature?" in joined
    assert "steps[1].epochs: Input should be greater than or equal to 1" in joined
    assert "steps[1].batchsize: unknown key; did you mean batch_size?" in joined
    assert "steps[1].backbone.name: unknown backbone 'resnet81'; did you mean 'resnet18'" in joined
    assert len(problems) == 4, joined
    # line numbers point at the offending keys
    lines = text.splitlines()
    for problem in problems:
        line_number = int(problem.split(":")[1].split()[0])
        key = problem.split()[1].rstrip(":").split(".")[-1].split("[")[0]
        assert key in lines[line_number - 1] or key == "name", (problem, lines[line_number - 1])


def test_missing_keys_and_bad_references(tmp_path):
    text = """\
name: refs
data:
  images: {name: image_folder, path: /nowhere}
steps:
  - name: a
    data: imagez
    init_from: b
    backbone: {name: resnet18}
    objective: {name: simclr}
    augmentations: [{name: simclr}]
  - name: b
    data: images
    backbone: {name: resnet34}
    augmentations: [{name: simclr}]
evaluation:
  data: images
  step: c
"""
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text), get_registry())
    joined = "\n".join(info.value.problems)
    assert "steps[1].objective: required key is missing" in joined
    # the structural error stops reference checks, so fix it and look again
    fixed = text.replace(
        "    backbone: {name: resnet34}\n", "    backbone: {name: resnet34}\n    objective: {name: simclr}\n"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, fixed), get_registry())
    joined = "\n".join(info.value.problems)
    assert "steps[0].data: no data named 'imagez'; did you mean 'images'?" in joined
    assert "steps[0].init_from: 'b' is not an earlier step (earlier steps: none)" in joined
    assert "evaluation.step: no step named 'c'" in joined


def test_init_from_needs_the_same_backbone(tmp_path):
    text = GOOD.replace(
        "    init_from: first\n    backbone: {name: resnet18}", "    init_from: first\n    backbone: {name: resnet34}"
    )
    with pytest.raises(RecipeError, match=r"steps\[1\].backbone: must match the backbone of step 'first'"):
        load_recipe(write(tmp_path, text), get_registry())


def test_component_arguments_are_checked_by_the_component(tmp_path):
    text = GOOD.replace("temperature: 0.1", "temperature: -1").replace(
        "[{name: simclr}]\n  - name: second", "[{name: simclr, min_scale: 2}]\n  - name: second"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text), get_registry())
    joined = "\n".join(info.value.problems)
    assert "steps[0].objective.temperature: Input should be greater than 0" in joined
    assert "steps[0].augmentations[0].min_scale: Input should be less than or equal to 1" in joined


def test_augmentations_need_exactly_one_view_maker(tmp_path):
    text = GOOD.replace(
        "augmentations: [{name: simclr}]\n  - name: second",
        "augmentations: [{name: simclr}, {name: simclr}]\n  - name: second",
    )
    with pytest.raises(RecipeError, match="exactly one view-making augmentation"):
        load_recipe(write(tmp_path, text), get_registry())


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "name: x\nsteps: [\n  - a\n")
    with pytest.raises(RecipeError, match=rf"{path}:\d+: invalid YAML"):
        load_recipe(path, get_registry())


def test_overrides_defaults_and_extends(tmp_path):
    write(tmp_path, GOOD, "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nname: child\ndefaults:\n  epochs: 4\n  image_size: 32\n", "child.yaml")
    recipe = load_recipe(child, get_registry(), overrides=["steps.1.epochs=7", "steps.0.objective.temperature=0.3"])
    assert recipe.name == "child"
    assert [s.epochs for s in recipe.steps] == [4, 7]
    assert {s.image_size for s in recipe.steps} == {32}
    assert recipe.steps[0].objective.spec()["temperature"] == 0.3


def test_error_in_an_extended_recipe_names_that_file(tmp_path):
    write(tmp_path, GOOD.replace("temperature: 0.1", "temprature: 0.1"), "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nname: child\n", "child.yaml")
    with pytest.raises(RecipeError, match=r"base.yaml:8 steps\[0\].objective.temprature"):
        load_recipe(child, get_registry())


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml", get_registry())


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps.5.epochs=2", "not an item of a list of 2"),
        ("noequals", "expects KEY=VALUE"),
        ("name.x=1", "cannot set a key inside a str"),
    ],
)
def test_bad_overrides_are_usage_errors(override, message):
    data = {"name": "x", "steps": [{}, {}]}
    with pytest.raises(UsageError, match=message):
        apply_override(data, override)


def test_override_values_parse_as_yaml():
    data = {"steps": [{"epochs": 1}]}
    apply_override(data, "steps.0.epochs=3")
    apply_override(data, "steps.0.devices=[0, 1]")
    apply_override(data, "evaluation.baselines=[]")
    assert data == {"steps": [{"epochs": 3, "devices": [0, 1]}], "evaluation": {"baselines": []}}


def test_shipped_recipes_validate():
    recipes = sorted(Path(__file__).resolve().parents[2].joinpath("recipes").glob("[!_]*.yaml"))
    assert recipes
    for path in recipes:
        load_recipe(path, get_registry())
