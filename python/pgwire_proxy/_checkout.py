"""Where the build outputs are when the package runs from a source checkout (PYTHONPATH=python).

An installed package is not in a checkout: it has its _core next to it and the binary in the
environment's scripts directory, and these return None.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

BUILD_DIR_ENV = "PGWIRE_PROXY_BUILD_DIR"


def checkout_root() -> Optional[Path]:
    """<repo> when this package is <repo>/python/pgwire_proxy of a source tree, else None."""
    package = Path(__file__).resolve().parent
    root = package.parents[1]
    if package == root / "python" / "pgwire_proxy" and (root / "CMakeLists.txt").is_file() and \
            (root / "cpp").is_dir():
        return root
    return None


def build_dir() -> Optional[Path]:
    """The checkout's CMake build directory: $PGWIRE_PROXY_BUILD_DIR, else <repo>/build (what
    scripts/build.sh uses). None outside a checkout."""
    root = checkout_root()
    if root is None:
        return None
    explicit = os.environ.get(BUILD_DIR_ENV)
    return Path(explicit).resolve() if explicit else root / "build"
