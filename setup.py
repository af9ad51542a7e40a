# setuptools shell for the pgwire_proxy package: metadata lives in pyproject.toml; this builds _core with CMake.
"""Builds pgwire_proxy._core by running the project's CMake build (target _core only).

    pip install --no-build-isolation --no-index .

CMake is configured in a fresh temporary directory (tests off, Release) and builds just the extension
and the core library it links, with $CMAKE_BUILD_PARALLEL_LEVEL jobs (default 2). Set
PGWIRE_PROXY_CMAKE_BUILD_DIR to keep the CMake build directory between runs (incremental rebuilds).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension CMake builds; setuptools only needs its name (sources=[] on purpose)."""

    def __init__(self, name: str, target: str):
        super().__init__(name, sources=[])
        self.target = target


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
        kept = os.environ.get("PGWIRE_PROXY_CMAKE_BUILD_DIR")
        if kept:
            Path(kept).mkdir(parents=True, exist_ok=True)
            self._cmake(cmake, Path(kept), output_dir, ext.target)
        else:
            with tempfile.TemporaryDirectory(prefix="pgwire-proxy-cmake-") as build_dir:
                self._cmake(cmake, Path(build_dir), output_dir, ext.target)
        if not target_file.is_file():
            built = sorted(p.name for p in output_dir.glob("_core*"))
            raise RuntimeError(f"CMake did not produce {target_file.name} in {output_dir} (found: {built}); "
                               f"is CMake's Python ({sys.executable}) the one running this build?")

    def _cmake(self, cmake: str, build_dir: Path, output_dir: Path, target: str) -> None:
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
        build = [cmake, "--build", str(build_dir), "--target", target, "-j", jobs]
        for argv in (configure, build):
            print(" ".join(argv), flush=True)
            subprocess.run(argv, check=True)


setup(
    ext_modules=[CMakeExtension("pgwire_proxy._core", target="_core")],
    cmdclass={"build_ext": CMakeBuild},
    # Not the default build/, which is the CMake build directory of scripts/build.sh.
    options={"build": {"build_base": "build-python"}},
)
