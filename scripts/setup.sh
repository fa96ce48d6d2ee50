#!/usr/bin/env bash
# Installs posformer's build, test and demo dependencies from Debian packages (idempotent).
set -euo pipefail
PKGS=(cmake g++ make pkg-config clang-format libdnnl-dev libhwy-dev nlohmann-json3-dev
      libcli11-dev libsentencepiece-dev libgtest-dev libbenchmark-dev
      python3-torch python3-numpy python3-matplotlib fortunes fortunes-zh)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: dependencies present"
