"""pytest fixtures of the network lab: ``lab`` (two hosts) and ``lab_factory`` (any shape).

Loaded for the whole suite by ``pytest_plugins = ["tests.lab.fixtures"]`` in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import pytest

from tests.lab import Lab, LabError, available


class LabFactory(Protocol):
    """``lab_factory(n, subnets=..., layout=..., udp_routed=...)`` makes a Lab."""

    def __call__(
        self,
        n: int = 2,
        *,
        subnets: int = 1,
        layout: Sequence[int] | None = None,
        udp_routed: bool = True,
    ) -> Lab:
        """A new lab, closed after the test."""
        ...


def require_lab() -> None:
    """Skip (with the reason) where the lab cannot run; CI turns a skip into a failure."""
    reason = available()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    """Make labs; every one is closed after the test, pass or fail."""
    if request.node.get_closest_marker("lab") is None:
        pytest.fail("tests that use the network lab must be marked @pytest.mark.lab")
    require_lab()
    labs: list[Lab] = []

    def make(
        n: int = 2,
        *,
        subnets: int = 1,
        layout: Sequence[int] | None = None,
        udp_routed: bool = True,
    ) -> Lab:
        lab = Lab.create(n, subnets=subnets, layout=layout, udp_routed=udp_routed)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        errors = []
        for lab in labs:
            try:
                lab.close()
            except LabError as exc:
                errors.append(str(exc))
        if errors:
            raise LabError("; ".join(errors))


@pytest.fixture
def lab(lab_factory: LabFactory) -> Lab:
    """A lab of two hosts on one bridge (198.18.0.1 and 198.18.0.2)."""
    return lab_factory(2)
