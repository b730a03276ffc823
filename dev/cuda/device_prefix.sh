#!/usr/bin/env bash
# Here (Debian 12): packs the Debian libraries the full build needs into .device/prefix.tar.xz, for a
# device call to carry (the GPU image has none of them, and a call carries at most 64 MiB). Only what the
# build and the programs use is kept: headers, shared libraries, GoogleTest's static libraries, the CMake
# and pkg-config files (their prefix rewritten to where device_model.sh unpacks them, /tmp/prefix).
#   usage: dev/cuda/device_prefix.sh        then carry [".device"] and run dev/cuda/device_model.sh there
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkgs=(libopenblas0-openmp libopenblas-pthread-dev libgfortran5 nlohmann-json3-dev libcli11-dev libpcre2-dev
      libpcre2-8-0 libicu-dev libicu72 libgtest-dev libgmock-dev pkgconf-bin libpkgconf3 libhwy-dev libhwy1
      libxxhash-dev libxxhash0)
(cd "$work" && apt-get download "${pkgs[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get download "${pkgs[@]}" >/dev/null; })
mkdir -p "$work/x"
for f in "$work"/*.deb; do dpkg -x "$f" "$work/x"; done
src=$work/x/usr
lib=$src/lib/x86_64-linux-gnu
p=$work/prefix
mkdir -p "$p/include" "$p/lib/pkgconfig" "$p/bin"
cp "$src/bin/pkgconf" "$p/bin/"  # CMake's FindPkgConfig needs the program; the image may lack it
cp -a "$lib"/libpkgconf.so.3* "$p/lib/"
cp -r "$src"/include/{CLI,gmock,gtest,nlohmann,pcre2.h,unicode,hwy,xxhash.h} "$p/include/"
cp "$src"/include/x86_64-linux-gnu/openblas-pthread/*.h "$p/include/"  # the same headers for every threading
# OpenBLAS's OpenMP build: it shares OpenMP's threads with our own loops (CMakeLists.txt says why).
cp "$lib/openblas-openmp/libopenblasp-r0.3.21.so" "$p/lib/"
ln -s libopenblasp-r0.3.21.so "$p/lib/libopenblas.so.0"
ln -s libopenblas.so.0 "$p/lib/libopenblas.so"
cp -a "$lib"/libgfortran.so.5* "$lib"/libicuuc.so* "$lib"/libicudata.so* "$lib"/libpcre2-8.so* "$p/lib/"
cp -a "$lib"/libhwy.so* "$lib"/libxxhash.so* "$p/lib/"
# GoogleTest's CMake files find the prefix four folders above themselves: keep Debian's multiarch layout.
mkdir -p "$p/lib/x86_64-linux-gnu/cmake"
cp "$lib"/libgtest*.a "$lib"/libgmock*.a "$p/lib/x86_64-linux-gnu/"
cp -r "$lib/cmake/GTest" "$p/lib/x86_64-linux-gnu/cmake/"
mkdir -p "$p/share/cmake" && cp -r "$src/share/cmake/CLI11" "$src/share/cmake/nlohmann_json" "$p/share/cmake/"
cat > "$p/lib/pkgconfig/openblas.pc" <<'EOF'
prefix=/tmp/prefix
Name: openblas
Description: OpenBLAS (Debian's OpenMP build), packed for the GPU machine
Version: 0.3.21
Libs: -L${prefix}/lib -lopenblas
Cflags: -I${prefix}/include
EOF
for pc in icu-uc libpcre2-8 libhwy libxxhash; do
  sed -E 's#^prefix *=.*#prefix=/tmp/prefix#; s#^libdir *=.*#libdir=${prefix}/lib#; s#^includedir *=.*#includedir=${prefix}/include#' \
    "$lib/pkgconfig/$pc.pc" > "$p/lib/pkgconfig/$pc.pc"
done
mkdir -p .device
XZ_OPT=-6 tar -C "$work" -cJf .device/prefix.tar.xz prefix
echo "wrote .device/prefix.tar.xz ($(du -h .device/prefix.tar.xz | cut -f1)); carry .device"
