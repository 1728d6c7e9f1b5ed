"""pytest plugin: the enforcement tests' shared fixtures.

``gate`` creates the objects the enforcing policy names (once per server), ``baseline`` is the database
as a module's tests find it (none of them may change it), ``enforcing`` is a pgproxy running the
enforcing policy. All module-scoped, so each test module gets its own proxy and baseline.
"""

from __future__ import annotations

import pytest

from tests.support.enforcement import ENFORCING, GateDatabase, Snapshot, gate_database
from tests.support.pg_plugin import RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy


@pytest.fixture(scope="module")
def gate(postgres: RealPostgres) -> GateDatabase:
    return gate_database(postgres)


@pytest.fixture(scope="module")
def baseline(gate: GateDatabase) -> Snapshot:
    """The database as the tests of this module find it: none of them may change it."""
    gate.assert_untouched()
    return gate.snapshot()


@pytest.fixture(scope="module")
def enforcing(proxy_factory: ProxyFactory, gate: GateDatabase) -> RunningProxy:
    return proxy_factory(policies=ENFORCING)
