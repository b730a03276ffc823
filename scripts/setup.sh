#!/usr/bin/env bash
# Installs the Debian packages the build needs, only those that are missing.
set -euo pipefail
pkgs=(cmake g++ make pkg-config libopenblas-dev libopenblas0-openmp nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev libxxhash-dev libgtest-dev)
if [[ "${MAMBA_SETUP_PYTHON:-0}" == 1 ]]; then pkgs+=(python3-torch python3-numpy); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
