"""What the README, the home page and the quick start say a recipe does, checked against
the recipe (issue 22: the home page still described a quick start two versions old).

A description is marked in the Markdown source (invisible once rendered)::

    <!-- recipe: recipes/quickstart.yaml -->
    ... SimCLR on `cxr_corpus`, 3 epochs at 32 px, a linear probe on `kermany` ...
    <!-- /recipe -->

and every checkable claim inside it must hold for that recipe: each number of epochs
and pixel size, each dataset, method and reference named, each share of the labels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sslmed.app.prepare import load_recipe_file
from sslmed.core.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]
REGION = re.compile(r"<!-- recipe: (?P<recipe>\S+) -->\n(?P<text>.*?)<!-- /recipe -->", re.S)
#: the places a newcomer reads first: each must describe the default recipe
REQUIRED = {
    "README.md": "recipes/quickstart.yaml",
    "docs/index.md": "recipes/quickstart.yaml",
    "docs/quickstart.md": "recipes/quickstart.yaml",
}
DATASETS = {
    "cxr_corpus": r"\bcxr_corpus\b",
    "kermany": r"\bkermany\b",
    "covid3": r"\bcovid3\b",
    "pneumoniamnist": r"pneumoniamnist",
}
METHODS = {
    "simclr": r"\bSimCLR\b",
    "crsm": r"\bCRSM\b",
    "byol": r"\bBYOL\b",
    "moco": r"\bMoCo\b",
    "simsiam": r"\bSimSiam\b",
    "dino": r"\bDINO\b",
    "vicreg": r"\bVICReg\b",
    "barlow_twins": r"Barlow Twins",
    "fastsiam": r"\bFastSiam\b",
}


def regions() -> list[tuple[str, str, str]]:
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for match in REGION.finditer(path.read_text(encoding="utf-8")):
            found.append((str(path.relative_to(REPO)), match["recipe"], " ".join(match["text"].split())))
    return found


def datasets_used(recipe: Recipe) -> set[str]:
    """The data keys the steps train on and the evaluation probes, with the paths and
    names of their sources (a union's ``exclude`` entries are not used)."""
    names = set()
    keys = {step.data for step in recipe.steps} | ({recipe.evaluation.data} if recipe.evaluation else set())
    for key in keys:
        spec = recipe.data[key].spec()
        names |= {key, spec["name"], str(spec.get("path", ""))}
        for source in spec.get("sources", []):
            names |= {source["dataset"]["name"], str(source["dataset"].get("path", ""))}
    return names


def claims_against(recipe: Recipe, text: str) -> list[str]:
    """Every claim of ``text`` that ``recipe`` contradicts, as a sentence."""
    wrong = []
    epochs = {step.epochs for step in recipe.steps}
    sizes = {step.image_size for step in recipe.steps}
    for number in re.findall(r"(\d+) (?:corpus )?epochs?\b", text):
        if int(number) not in epochs:
            wrong.append(f"{number} epochs (the recipe: {sorted(epochs)})")
    for number in re.findall(r"(\d+) px\b", text):
        if int(number) not in sizes:
            wrong.append(f"{number} px (the recipe: {sorted(sizes)})")
    used = " ".join(datasets_used(recipe)).lower()
    for name, pattern in DATASETS.items():
        if re.search(pattern, text, re.I) and name not in used:
            wrong.append(f"dataset {name} (the recipe's data: {sorted(recipe.data)})")
    objectives = {step.objective.name for step in recipe.steps}
    for name, pattern in METHODS.items():
        if re.search(pattern, text) and name not in objectives:
            wrong.append(f"method {name} (the recipe's objectives: {sorted(objectives)})")
    evaluation = recipe.evaluation
    assert evaluation is not None, "a described recipe is one that evaluates"
    references = {
        "random_init": r"random init",
        "raw_pixels": r"raw pixels",
        "supervised": r"supervised|from scratch",
    }
    for name, pattern in references.items():
        if re.search(pattern, text, re.I) and name not in evaluation.baselines:
            wrong.append(f"reference {name} (the recipe's baselines: {evaluation.baselines})")
    if re.search(r"\bkNN\b", text) and "knn" not in evaluation.probes:
        wrong.append(f"a kNN probe (the recipe's probes: {evaluation.probes})")
    if re.search(r"linear probe", text, re.I) and "linear" not in evaluation.probes:
        wrong.append(f"a linear probe (the recipe's probes: {evaluation.probes})")
    tuned = evaluation.finetune
    if re.search(r"fine-tun", text, re.I) and tuned is None:
        wrong.append("fine-tuning (the recipe has no evaluation.finetune)")
    fractions = set(evaluation.label_fractions) | set((tuned.label_fractions or []) if tuned else [])
    for share in re.findall(r"(\d+)% (?:of the (?:train )?labels|and \d+% of the labels)", text):
        if int(share) / 100 not in fractions:
            wrong.append(f"{share}% of the labels (the recipe's label fractions: {sorted(fractions)})")
    return wrong


def test_the_first_pages_describe_the_default_recipe():
    marked = {(page, recipe) for page, recipe, _text in regions()}
    for page, recipe in REQUIRED.items():
        assert (page, recipe) in marked, f"{page}: no <!-- recipe: {recipe} --> description"


@pytest.mark.parametrize(("page", "recipe", "text"), regions(), ids=lambda v: str(v)[:40])
def test_a_description_says_what_the_recipe_does(page: str, recipe: str, text: str):
    loaded, _registry = load_recipe_file(REPO / recipe)
    wrong = claims_against(loaded, text)
    assert not wrong, f"{page} describes {recipe} wrongly: " + "; ".join(wrong)


def test_a_wrong_description_is_caught():
    """The home page's old text (PneumoniaMNIST, then covid3, kNN, supervised) against the
    recipe it claimed to describe."""
    old = (
        "pre-trains a ResNet-18 with SimCLR on PneumoniaMNIST, continues on the three-class covid3 set, "
        "fits a linear and a kNN probe on frozen features, trains the same network from scratch as a reference"
    )
    loaded, _registry = load_recipe_file(REPO / "recipes" / "quickstart.yaml")
    wrong = claims_against(loaded, old)
    assert any("pneumoniamnist" in w for w in wrong) and any("covid3" in w for w in wrong)
    assert any("kNN" in w for w in wrong) and any("supervised" in w for w in wrong)
    assert not claims_against(loaded, "SimCLR on cxr_corpus, 3 epochs at 32 px, a linear probe on kermany")
    assert claims_against(loaded, "10 epochs at 64 px") == [
        "10 epochs (the recipe: [3])",
        "64 px (the recipe: [32])",
    ]
