"""Fixtures: the real `pigeonhole-local` binary on a free loopback port."""
import pytest

from harness import start_server, stop_server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One server shared by the tests that register their own fingerprints."""
    srv = start_server(tmp_path_factory.mktemp("pigeonhole"),
                       admin_token="test-admin-token", operator_token="test-operator-token")
    yield srv
    stop_server(srv)
