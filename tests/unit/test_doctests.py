"""The examples in the package's docstrings run (those that need a provider say +SKIP)."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import mnimi_adapters

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(mnimi_adapters.__path__, "mnimi_adapters.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"


@pytest.mark.parametrize("name", mnimi_adapters.__all__)
def test_every_public_name_shows_an_example(name: str) -> None:
    # A user's help() on any exported name should show how it is used, not only what it is.
    doc = inspect.getdoc(getattr(mnimi_adapters, name)) or ""
    assert ">>>" in doc, f"mnimi_adapters.{name} has no docstring example"
