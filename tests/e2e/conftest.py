"""e2e suite setup: the repo's python/ on sys.path and the pgwire_proxy pytest plugin loaded."""

import sys
from pathlib import Path

_PYTHON_DIR = str(Path(__file__).resolve().parents[2] / "python")
if _PYTHON_DIR not in sys.path:
    sys.path.insert(0, _PYTHON_DIR)

_PLUGIN = "pgwire_proxy.pytest_plugin"


def pytest_configure(config):
    # The plugin's fixtures: pg_upstream (session), pgwire_proxy, pgwire_proxy_factory.
    # Registered here rather than with `pytest_plugins = [...]`, which pytest refuses in a conftest
    # below the rootdir (`pytest tests` from the repo root would fail), and skipped when the plugin
    # is already active (e.g. through a pytest11 entry point once the package is installed).
    import importlib
    module = importlib.import_module(_PLUGIN)
    if not config.pluginmanager.is_registered(module):
        config.pluginmanager.register(module, _PLUGIN)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def pgwire_template_setup():
    """What every pgwire_database of this suite starts with (test_database_fixture.py checks it; the
    docs' retry-loop example in test_harness_recipes.py uses the accounts)."""
    import psycopg

    def setup(template):
        with psycopg.connect(template.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION citext")
            conn.execute("CREATE TABLE from_the_template (name citext PRIMARY KEY)")
            conn.execute("INSERT INTO from_the_template VALUES ('Seeded')")
            # The accounts of the retry-loop example in docs/testing-with-pgwire-proxy.md.
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
            conn.execute("INSERT INTO accounts VALUES (1, 100), (2, 0)")

    return setup
