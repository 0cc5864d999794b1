"""Recipe texts the tests share, written once.

:data:`ONE_STEP` validates without data (its folder need not exist), so recipe, YAML,
``--set`` and resume tests start from the same text and change one line of it; tests that
train use the tiny two-step recipe of ``tests/conftest.py`` on real data instead.
"""

from __future__ import annotations

#: one pre-training step over a folder that need not exist (``&net`` lets a test add a second
#: step that reuses the backbone by alias); line 10 is ``epochs: 2``
ONE_STEP = """\
name: good
data:
  images: {name: image_folder, path: /nowhere}
steps:
  - name: first
    data: images
    backbone: &net {name: resnet18}
    objective: {name: simclr}
    augmentations: [{name: simclr}]
    epochs: 2
"""
