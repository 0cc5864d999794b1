"""The hooks a plugin can implement.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names
match the specifications below. Registration hooks receive a ``register`` callback
rather than returning lists, so the core can check each name, reject duplicates and
record which plugin provided which component.

``register(name, factory, *, args=None, description=None, **metadata)``:

* ``name``: the name recipes use (``mdre``, ``resnet18``).
* ``factory``: a callable building the component; what it receives depends on the
  kind (see each hook).
* ``args``: a pydantic model of the component's arguments. Recipes are validated
  against it before anything trains, and ``sslmed info`` documents it.
* ``description``: one line for listings; defaults to the factory's docstring.

A component can hold other components: an argument typed
``Annotated[dict[str, Any], sslmed.core.registry.Nested("decoder")]`` (also inside lists,
dicts and sub-models) is a spec ``{name: ..., <its arguments>}`` of that kind. Recipe
validation checks it against that component's own argument model, with line numbers,
and every factory that accepts a ``build`` keyword (or ``**kwargs``) receives
``build(kind, spec, **context)`` to construct it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("sslmed")
hookimpl = pluggy.HookimplMarker("sslmed")


class Register(Protocol):
    """The callback a registration hook receives: ``register(name, factory, args=Model)``.

    ``factory`` builds the component from its validated arguments (an instance of
    ``args``, a pydantic model) and keyword context; ``description`` defaults to the
    factory's docstring; other keywords are kind-specific metadata (an augmentation's
    ``stage`` and ``batched`` factory). A name already taken is an error naming both
    plugins.
    """

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        args: type[Any] | None = None,
        description: str | None = None,
        **metadata: Any,
    ) -> Any: ...


@hookspec
def register_augmentations(register: Register) -> None:
    """Register augmentations.

    ``factory(args) -> transform``. Each augmentation declares a ``stage`` in its
    metadata: ``"image"`` (PIL image to PIL image, before the views are made, e.g.
    contrast enhancement), ``"views"`` (PIL image to a list of normalised tensors, one
    per view; exactly one per pipeline, e.g. ``simclr``), or ``"tensor"`` (a
    normalised ``C×H×W`` or ``B×C×H×W`` tensor to a tensor, applied to each view
    after normalisation, e.g. ``mdre``). A ``views`` factory is also given
    ``image_size`` and ``in_channels`` keyword arguments.
    """


@hookspec
def register_backbones(register: Register) -> None:
    """Register backbones (encoders).

    ``factory(args, *, in_channels, build) -> sslmed.core.backbone.Backbone``: a module whose
    ``forward`` returns pooled features ``B×feature_dim`` and whose
    ``forward_features`` returns the last feature map ``B×C×h×w``. It also sets
    ``feature_dim``, ``in_channels`` and ``stride`` (the total down-sampling from the
    input to the last feature map, which decoders use to size their up-sampling), and
    implements ``last_stage()``, the module whose output is that feature map (the
    target of Grad-CAM explanations).
    """


@hookspec
def register_decoders(register: Register) -> None:
    """Register decoders that reconstruct an image from a backbone's feature map.

    ``factory(args, *, backbone, image_size, out_channels, build) -> nn.Module`` mapping
    ``backbone.forward_features(x)`` back to a ``B×out_channels×image_size×image_size``
    image.
    """


@hookspec
def register_objectives(register: Register) -> None:
    """Register self-supervised objectives (methods).

    ``factory(args, *, backbone, build, image_size, in_channels) ->
    sslmed.training.methods.SSLMethod``, a LightningModule that owns the backbone and its
    heads. ``build(kind, spec, **context)`` builds a nested component (e.g. a decoder
    declared with ``Nested("decoder")``) from its spec.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset adapters.

    ``factory(args, *, data_root, build) -> sslmed.data.sources.ImageSource``, which lists the
    images of each split with their labels and patient ids. ``sslmed.data.adapters`` holds
    the toolkit adapters share (loading and split options, ``finish_source``, CSV
    reading, image suffixes); ``build("dataset", spec, data_root=...)`` builds member
    datasets declared with ``Nested("dataset")`` (as ``union`` does).
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``sslmed`` command line; ``cli`` is its click group."""
