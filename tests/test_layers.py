"""The import-layers contract (pyproject.toml, checked by ``lint-imports`` in CI) covers every module."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import grimp

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _contract(contract_id: str) -> dict[str, Any]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    contract: dict[str, Any] = next(c for c in config["contracts"] if c["id"] == contract_id)
    return contract


def _covered(module: str, names: list[str]) -> bool:
    return any(module == n or module.startswith(n.removesuffix(".**") + ".") for n in names)


def test_every_module_is_pure_or_above_the_pure_ones() -> None:
    """A new module must be named: either pure, or among those pure modules may not import."""
    contract = _contract("pure-below")
    names = [*contract["source_modules"], *contract["forbidden_modules"]]
    graph = grimp.build_graph("handoffd")
    packages = {"handoffd", "handoffd.transport"}  # split into their modules in the contract
    unnamed = sorted(m for m in graph.modules if m not in packages and not _covered(m, names))
    assert unnamed == [], f"classify these in pyproject.toml's pure-below contract: {unnamed}"


def test_the_pure_contracts_name_the_same_modules() -> None:
    """No I/O and nothing above: the same list of pure modules."""
    assert sorted(_contract("pure-no-io")["source_modules"]) == sorted(
        _contract("pure-below")["source_modules"]
    )
