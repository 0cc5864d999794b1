"""Nested components: an argument that is itself a component, validated and built generically."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pydantic
import pytest
import torch
from click.testing import CliRunner

from sslmed.app.cli import cli
from sslmed.core import plugins
from sslmed.core.errors import RecipeError
from sslmed.core.hookspecs import hookimpl
from sslmed.core.recipe import load_recipe
from sslmed.core.registry import Nested
from sslmed.training.methods import SSLMethod


class TwinArgs(pydantic.BaseModel):
    """A third-party objective with a decoder inside a sub-model and a list of extra decoders."""

    model_config = pydantic.ConfigDict(extra="forbid")

    class Head(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        decoder: Annotated[dict[str, Any], Nested("decoder")]

    head: Head
    extra: list[Annotated[dict[str, Any], Nested("decoder")]] = []


class TwinMethod(SSLMethod):
    def __init__(self, backbone: torch.nn.Module, decoders: list[torch.nn.Module]) -> None:
        super().__init__(backbone)
        self.decoders = torch.nn.ModuleList(decoders)


def build_twin(args: TwinArgs, *, backbone: Any, build: Any, image_size: int, in_channels: int, **_: Any) -> Any:
    """An objective that builds its decoders with the ``build`` it is given."""
    specs = [args.head.decoder, *args.extra]
    decoders = [build("decoder", s, backbone=backbone, image_size=image_size, out_channels=in_channels) for s in specs]
    return TwinMethod(backbone, decoders)


class TwinPlugin:
    @hookimpl
    def register_objectives(self, register):
        register("twin", build_twin, args=TwinArgs)


@pytest.fixture
def twin():
    plugins.register_plugin(TwinPlugin(), name="twin-plugin")
    try:
        yield plugins.get_registry()
    finally:
        plugins.unregister_plugin("twin-plugin")


RECIPE = """\
name: nested
data:
  images: {name: image_folder, path: /nowhere}
steps:
  - name: only
    data: images
    backbone: {name: resnet18, small_input: true}
    objective:
      name: twin
      head:
        decoder: {name: resnet_decoder, width: 16}
      extra:
        - {name: resnet_decoder, width: 8}
    augmentations: [{name: simclr}]
"""


def test_third_party_nested_component_is_validated_with_lines(tmp_path: Path, twin):
    path = tmp_path / "r.yaml"
    path.write_text(
        RECIPE.replace("{name: resnet_decoder, width: 16}", "{name: resnet_decoder, widht: 16}").replace(
            "{name: resnet_decoder, width: 8}", "{name: resnet_decodr}"
        )
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path, twin)
    joined = "\n".join(info.value.problems)
    assert f"{path}:11 steps[0].objective.head.decoder.widht: unknown key; did you mean width?" in joined
    assert f"{path}:13 steps[0].objective.extra[0].name: unknown decoder 'resnet_decodr'" in joined
    assert "did you mean 'resnet_decoder'" in joined


def test_nested_spec_without_a_name_is_reported(tmp_path: Path, twin):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("{name: resnet_decoder, width: 16}", "{width: 16}"))
    with pytest.raises(RecipeError, match=r"objective\.head\.decoder: .*must be a decoder spec with a name"):
        load_recipe(path, twin)


def test_third_party_factory_builds_its_nested_components(tmp_path: Path, twin):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    step = load_recipe(path, twin).steps[0]
    backbone = twin.build("backbone", step.backbone.spec(), in_channels=1)
    method = twin.build("objective", step.objective.spec(), backbone=backbone, image_size=16, in_channels=1)
    assert [decoder.reduce[0].out_channels for decoder in method.decoders] == [16, 8]  # each decoder's width


UNION = """\
name: pooled
data:
  corpus:
    name: union
    sources:
      - dataset: {name: csv, path: covid3, patient_column: patient_id}
      - dataset: {name: csv, path: covid_extra_hannover, patient_colum: patient_id}
    exclude:
      - dataset: {name: union, sources: []}
        split: test
steps:
  - name: only
    data: corpus
    backbone: {name: resnet18}
    objective: {name: simclr}
    augmentations: [{name: simclr}]
"""


def test_validate_no_data_catches_a_typo_inside_a_union_member(tmp_path: Path):
    path = tmp_path / "pooled.yaml"
    path.write_text(UNION)
    result = CliRunner().invoke(cli, ["validate", "--no-data", str(path)])
    assert result.exit_code == 2, result.output
    assert (
        f"{path}:7 data.corpus.sources[1].dataset.patient_colum: unknown key; did you mean patient_column"
        in result.output
    )
    assert (
        f"{path}:9 data.corpus.exclude[0].dataset: Value error, a dataset 'union' is not allowed here" in result.output
    )
    assert "Traceback" not in result.output


def test_info_names_the_kind_of_a_nested_argument():
    result = CliRunner().invoke(cli, ["info", "crsm"])
    assert result.exit_code == 0, result.output
    assert "decoder (a decoder spec, default {'name': 'resnet_decoder'})" in result.output
