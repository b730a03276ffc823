"""Builds the extension mambacpp._core with the project's CMake (the same build as the CLI's), then lets
setuptools package it with python/mambacpp. Metadata is in pyproject.toml.

Environment: MAMBA_CMAKE_ARGS adds CMake flags (e.g. "-DMAMBA_NATIVE=OFF -DMAMBA_CUDA=OFF");
CMAKE_BUILD_PARALLEL_LEVEL sets the build's jobs (default: every core).
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = Path(self.build_temp).resolve() / "cmake"
        build.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DMAMBA_TESTS=OFF",
            "-DMAMBA_PYTHON=ON", f"-DPython_EXECUTABLE={sys.executable}",
        ] + shlex.split(os.environ.get("MAMBA_CMAKE_ARGS", ""))
        subprocess.run(configure, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build), "--target", "mamba_python", "-j", jobs], check=True)
        built = sorted((build / "python" / "mambacpp").glob("_core*.so"))
        if not built:
            raise RuntimeError(f"the CMake build made no _core extension in {build / 'python' / 'mambacpp'}")
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[-1], target)


setup(
    ext_modules=[Extension("mambacpp._core", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    options={"build": {"build_base": "build-python"}},  # not build/, the CMake build of `make build`
)
