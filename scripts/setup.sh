#!/usr/bin/env bash
# Installs the Debian packages the build needs, only those that are missing.
set -euo pipefail
pkgs=(cmake g++ make pkg-config libopenblas-dev libopenblas0-openmp nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev libxxhash-dev libgtest-dev libhwy-dev libdnnl-dev)
# The Python package (python/): pybind11 and NumPy to build and use it, pytest for its tests, pip, venv
# and wheel for `make python`, PyTorch for mambacpp.torch (its tests skip without it).
pkgs+=(python3-dev python3-pybind11 python3-numpy python3-pytest python3-pip python3-venv python3-wheel python3-torch)
if [[ "${MAMBA_SETUP_PYTHON:-0}" == 1 ]]; then pkgs+=(python3-torch python3-numpy); fi
# The HTTP server: cpp-httplib; its tests run OpenAI's client for Node (Debian's nodejs and npm, unless
# a Node.js is already installed).
pkgs+=(libcpp-httplib-dev)
# Data-parallel training on CPUs (mpirun -np N mambacpp train ...): OpenMPI.
pkgs+=(libopenmpi-dev openmpi-bin)
command -v node >/dev/null || pkgs+=(nodejs npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The fuzz targets (make test-fuzz) need clang with libFuzzer and OpenMP; they are optional: when these
# cannot be installed, the targets are skipped.
fuzz_pkgs=(clang libclang-rt-14-dev libfuzzer-14-dev libomp-14-dev)
missing_fuzz=()
for p in "${fuzz_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_fuzz+=("$p")
done
if ((${#missing[@]} + ${#missing_fuzz[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -q
  if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
  fi
  if ((${#missing_fuzz[@]})); then
    echo "setup: installing ${missing_fuzz[*]} (for the fuzz targets)"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing_fuzz[@]}" ||
      echo "setup: could not install ${missing_fuzz[*]}: the fuzz targets will be skipped"
  fi
fi
# The npm packages of the server's tests, as tests/server/package-lock.json pins them.
here=$(cd "$(dirname "$0")/.." && pwd)
if [[ ! -f $here/tests/server/node_modules/openai/package.json ]]; then
  echo "setup: npm ci in tests/server"
  npm ci --prefix "$here/tests/server" --no-audit --no-fund --loglevel=error
fi
