"""pytest plugin: the fake OIDC identity provider. Registered with
``pytest_plugins = ["tests.support.idp_plugin"]`` in ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fake_idp import FakeIdP


@pytest.fixture(scope="session")
def fake_idp() -> Iterator[FakeIdP]:
    """A started fake IdP shared by the whole session.

    Shared state: counters only grow and ``rotate()`` changes the minting key for everyone, so tests
    compare ``jwks_requests`` before/after, and tests that rotate keys build their own ``FakeIdP``.
    """
    idp = FakeIdP().start()
    try:
        yield idp
    finally:
        idp.close()
