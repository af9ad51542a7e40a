"""e2e suite setup: the repo's python/ on sys.path and the pgwire_proxy pytest plugin loaded."""

import sys
from pathlib import Path

_PYTHON_DIR = str(Path(__file__).resolve().parents[2] / "python")
if _PYTHON_DIR not in sys.path:
    sys.path.insert(0, _PYTHON_DIR)

# Fixtures: pg_upstream (session), pgwire_proxy, pgwire_proxy_factory.
pytest_plugins = ["pgwire_proxy.pytest_plugin"]
