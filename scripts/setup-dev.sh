#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian/Ubuntu machine (run as root):
# the Debian packages in .ci/apt-packages.txt and podsys with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
pkgs=$(grep -v '^\s*#' .ci/apt-packages.txt | awk 'NF{print $1}' | sort -u | tr '\n' ' ')
missing=$(dpkg-query -W -f='${Package} ${Status}\n' $pkgs 2>/dev/null | awk '$4!="installed"{print $1}' || true)
# dpkg-query is silent for packages it has never heard of: treat those as missing too.
for p in $pkgs; do dpkg-query -W "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "${missing// }" ]; then
  apt-get update -q
  apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends $missing
fi
python3 -m pip install -q -e '.[test]'
