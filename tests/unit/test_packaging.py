"""What the installed package carries for its users' tools."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path


def test_the_package_is_marked_as_typed_and_ships_the_marker() -> None:
    # PEP 561: without py.typed a user's mypy ignores every annotation of the package.
    assert resources.files("mnimi_adapters").joinpath("py.typed").is_file()
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["mnimi_adapters"]
