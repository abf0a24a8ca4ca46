"""``import bayes_lora as bl``: the public surface resolves lazily to the subpackages' objects."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import bayes_lora as bl


def test_every_public_name_is_the_defining_modules_object():
    assert sorted(bl.__all__) == sorted(bl._EXPORTS)
    for name, module in bl._EXPORTS.items():
        assert getattr(bl, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'fit_everything'"):
        bl.fit_everything  # noqa: B018


def test_import_is_light():
    """``import bayes_lora`` loads neither torch nor pyro (names are imported on first use)."""
    code = "import sys, bayes_lora; print('torch' in sys.modules, 'pyro' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
