"""The plugin registry: built-ins, duplicates, unknown names, third-party plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pydantic
import pytest

from sslmed.core import plugins
from sslmed.core.errors import DuplicateComponentError, UnknownComponentError, UsageError
from sslmed.core.hookspecs import hookimpl
from sslmed.core.registry import Registry


def test_builtins_are_registered_through_the_hooks():
    registry = plugins.get_registry()
    assert {"resnet18", "resnet34", "resnet50"} <= set(registry.names("backbone"))
    assert "simclr" in registry.names("objective")
    assert "simclr" in registry.names("augmentation")
    assert {"csv", "image_folder", "medmnist_npz"} <= set(registry.names("dataset"))
    assert registry.get("backbone", "resnet18").plugin == "sslmed.default_plugins.backbones"


def test_duplicate_name_names_both_plugins():
    registry = Registry()
    registry.register("backbone", "net", lambda args: None, plugin="first")
    with pytest.raises(DuplicateComponentError) as info:
        registry.register("backbone", "net", lambda args: None, plugin="second")
    assert "'first'" in str(info.value) and "'second'" in str(info.value)


def test_same_name_in_another_kind_is_allowed():
    registry = Registry()
    registry.register("objective", "simclr", lambda args: None, plugin="a")
    registry.register("augmentation", "simclr", lambda args: None, plugin="a")
    assert registry.get("augmentation", "simclr").kind == "augmentation"


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownComponentError) as info:
        plugins.get_registry().get("backbone", "resnet81")
    message = str(info.value)
    assert "unknown backbone 'resnet81'" in message
    assert "did you mean 'resnet18'" in message


def test_build_reports_bad_arguments_with_component_name():
    with pytest.raises(UsageError, match="backbone 'resnet18': small_inptu"):
        plugins.get_registry().build("backbone", {"name": "resnet18", "small_inptu": True}, in_channels=1)


class _Args(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    width: int = 4


class ThrowawayPlugin:
    @hookimpl
    def register_backbones(self, register):
        register("throwaway_net", lambda args, **kw: ("built", args.width), args=_Args)


def test_plugin_registered_at_run_time_provides_components():
    plugins.register_plugin(ThrowawayPlugin(), name="throwaway")
    try:
        registry = plugins.get_registry()
        component = registry.get("backbone", "throwaway_net")
        assert component.plugin == "throwaway"
        assert registry.build("backbone", {"name": "throwaway_net", "width": 7}) == ("built", 7)
        assert "throwaway" in {info.name for info in plugins.plugin_infos()}
    finally:
        plugins.unregister_plugin("throwaway")
    assert "throwaway_net" not in plugins.get_registry().names("backbone")


def test_plugin_that_duplicates_a_builtin_is_refused_with_both_names():
    class Clash:
        @hookimpl
        def register_backbones(self, register):
            register("resnet18", lambda args, **kw: None)

    plugins.register_plugin(Clash(), name="clash")
    try:
        registry = plugins.get_registry()  # the external plugin is skipped, the built-in one stays
        assert registry.get("backbone", "resnet18").plugin == "sslmed.default_plugins.backbones"
        errors = {info.name: info.error for info in plugins.plugin_infos()}
        assert "registers backbone 'resnet18', which plugin 'sslmed.default_plugins.backbones'" in errors["clash"]
    finally:
        plugins.unregister_plugin("clash")
        plugins.reload()


PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "sslmed-entrypoint-probe"
        version = "1.2.3"
        [project.entry-points.sslmed]
        probe = "sslmed_entrypoint_probe"
        broken = "sslmed_entrypoint_broken"
        [tool.setuptools]
        py-modules = ["sslmed_entrypoint_probe", "sslmed_entrypoint_broken"]
    """,
    "sslmed_entrypoint_probe.py": """
        from sslmed.core.hookspecs import hookimpl

        def build(args, **context):
            \"\"\"Keeps the image as it is.\"\"\"
            return lambda image: image

        @hookimpl
        def register_augmentations(register):
            register("identity_probe", build, stage="image")
    """,
    "sslmed_entrypoint_broken.py": """
        raise ImportError("this plugin is broken on purpose")
    """,
}


@pytest.fixture(scope="module")
def installed_package(tmp_path_factory) -> Path:
    """A tiny plugin package, pip-installed into a folder put on sys.path."""
    source = tmp_path_factory.mktemp("pkg")
    for name, text in PACKAGE.items():
        (source / name).write_text(textwrap.dedent(text))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    plugins.reload()
    yield target
    sys.path.remove(str(target))
    for module in ("sslmed_entrypoint_probe", "sslmed_entrypoint_broken"):
        sys.modules.pop(module, None)
    plugins.reload()


def test_entry_point_plugin_is_loaded_with_its_version(installed_package):
    registry = plugins.get_registry()
    assert registry.get("augmentation", "identity_probe").plugin == "probe"
    infos = {info.name: info for info in plugins.plugin_infos()}
    assert infos["probe"].version == "1.2.3"
    assert infos["probe"].hooks == ("register_augmentations",)


def test_broken_entry_point_is_reported_by_name_not_raised(installed_package):
    infos = {info.name: info for info in plugins.plugin_infos()}
    assert infos["broken"].error is not None
    assert "broken on purpose" in infos["broken"].error
    assert "resnet18" in plugins.get_registry().names("backbone")


def test_disable_env_blocks_an_external_plugin(installed_package, monkeypatch):
    monkeypatch.setenv("SSLMED_DISABLE_PLUGINS", "probe, broken")
    plugins.reload()
    try:
        names = {info.name for info in plugins.plugin_infos()}
        assert "probe" not in names and "broken" not in names
        assert "identity_probe" not in plugins.get_registry().names("augmentation")
    finally:
        monkeypatch.delenv("SSLMED_DISABLE_PLUGINS")
        plugins.reload()
