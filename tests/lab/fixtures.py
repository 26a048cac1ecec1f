"""pytest fixtures of the network lab: ``lab`` (two hosts) and ``lab_factory``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.lab import Lab, available


def require_lab() -> None:
    """Skip (with the reason) where the lab cannot run; CI turns a skip into a failure."""
    reason = available()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    """Make labs (``lab_factory(3, subnets=2)``); all are removed afterwards, also on failure."""
    require_lab()
    labs: list[Lab] = []

    def make(n: int = 2, *, subnets: int = 1) -> Lab:
        lab = Lab.create(n, subnets=subnets)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    """A lab of two hosts on one bridge."""
    return lab_factory(2)
