# setuptools shell for the pgwire_proxy package: metadata lives in pyproject.toml; this builds _core with CMake.
"""Builds pgwire_proxy._core and the pgwire-proxy binary by running the project's CMake build.

    pip install --no-build-isolation --no-index .

CMake is configured in a fresh temporary directory (tests off, Release) and builds just the extension,
the binary and the core library they link, with $CMAKE_BUILD_PARALLEL_LEVEL jobs (default 2). Set
PGWIRE_PROXY_CMAKE_BUILD_DIR to keep the CMake build directory between runs (incremental rebuilds).

The extension goes into the package; the binary is installed as a data file into <prefix>/bin, the
environment's scripts directory (a venv's bin/, on its PATH), where pgwire_proxy.find_binary() looks.
The version comes from python/pgwire_proxy/_version.py (pyproject.toml), which CMake reads too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Tuple

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
BUILD_BASE = "build-python"  # not the default build/, which is the CMake build directory of scripts/build.sh
# Where build_ext leaves the binary for install_data (data_files paths are relative to this directory).
BINARY_STAGED = f"{BUILD_BASE}/bin/pgwire-proxy"


class CMakeExtension(Extension):
    """An extension CMake builds; setuptools only needs its name (sources=[] on purpose)."""

    def __init__(self, name: str, target: str, also: Tuple[str, ...] = ()):
        super().__init__(name, sources=[])
        self.target = target
        self.also = also  # further targets of the same build (the binary)


class CMakeBuild(build_ext):
    """build_ext that configures the repo with CMake and builds each extension's target."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("cmake not found: install CMake (apt-get install cmake) to build pgwire_proxy._core")
        # get_ext_fullpath gives build_lib/pgwire_proxy/... (or the source tree with --inplace / editable).
        target_file = Path(self.get_ext_fullpath(ext.name)).resolve()
        output_dir = target_file.parent
        output_dir.mkdir(parents=True, exist_ok=True)
        targets = [ext.target, *ext.also]
        kept = os.environ.get("PGWIRE_PROXY_CMAKE_BUILD_DIR")
        if kept:
            Path(kept).mkdir(parents=True, exist_ok=True)
            self._cmake(cmake, Path(kept), output_dir, targets)
            self._stage_binary(Path(kept))
        else:
            with tempfile.TemporaryDirectory(prefix="pgwire-proxy-cmake-") as build_dir:
                self._cmake(cmake, Path(build_dir), output_dir, targets)
                self._stage_binary(Path(build_dir))
        if not target_file.is_file():
            built = sorted(p.name for p in output_dir.glob("_core*"))
            raise RuntimeError(f"CMake did not produce {target_file.name} in {output_dir} (found: {built}); "
                               f"is CMake's Python ({sys.executable}) the one running this build?")

    @staticmethod
    def _stage_binary(build_dir: Path) -> None:
        """Copies build/pgwire-proxy to BINARY_STAGED, which data_files installs into <prefix>/bin."""
        staged = ROOT / BINARY_STAGED
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / "pgwire-proxy", staged)

    def _cmake(self, cmake: str, build_dir: Path, output_dir: Path, targets: List[str]) -> None:
        configure = [
            cmake, "-S", str(ROOT), "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DPGWIRE_PROXY_TESTS=OFF",
            # Compiler warnings must not break an install on a compiler the project was not tried with.
            "-DPGWIRE_PROXY_WERROR=OFF",
            f"-DPGWIRE_PROXY_PYTHON_OUTPUT_DIR={output_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
        ]
        try:  # pybind11 from pip ships its CMake files; Debian's pybind11-dev puts them where CMake looks
            import pybind11
            if (Path(pybind11.get_cmake_dir()) / "pybind11Config.cmake").is_file():
                configure.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except (ImportError, AttributeError):
            pass
        if "CMAKE_GENERATOR" not in os.environ and shutil.which("ninja") and \
                not (build_dir / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        parallel = self.parallel if isinstance(self.parallel, int) and self.parallel > 1 else 2
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(parallel)
        build = [cmake, "--build", str(build_dir), "--target", *targets, "-j", jobs]
        for argv in (configure, build):
            print(" ".join(argv), flush=True)
            subprocess.run(argv, check=True)


setup(
    ext_modules=[CMakeExtension("pgwire_proxy._core", target="_core", also=("pgwire-proxy",))],
    cmdclass={"build_ext": CMakeBuild},
    # "bin" is relative to the install prefix: a venv's bin/, ~/.local/bin with --user, /usr/local/bin.
    data_files=[("bin", [BINARY_STAGED])],
    options={"build": {"build_base": BUILD_BASE}},
)
