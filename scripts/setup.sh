#!/usr/bin/env bash
# Installs what posformer's scripts need from Debian packages (idempotent; Debian 12).
#   bash scripts/setup.sh           build, demo and tests (scripts/demo.sh, scripts/test.sh)
#   bash scripts/setup.sh --bench   also what bench/run.sh and bench/train_bench.sh need
# Every package is named here: apt-get runs with --no-install-recommends, so nothing that a
# script, test or plot uses may come only as a Recommends (a brand-new Debian 12 system has none
# of them; bash ../shared/tools/fresh-machine.sh checks that on one).
set -euo pipefail
BENCH=0
for a in "$@"; do
  case "$a" in
    --bench) BENCH=1 ;;
    -h|--help) sed -n 2,7p "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done

PKGS=(
  # build: compiler, CMake, and the libraries CMakeLists.txt finds (OpenMP comes with g++)
  cmake g++ make pkg-config libdnnl-dev libhwy-dev nlohmann-json3-dev libcli11-dev
  libsentencepiece-dev libgtest-dev zlib1g-dev libpng-dev
  # demo: the default corpus (Debian's English fortunes and Tang/Song poems), python3 to read
  # metrics, matplotlib for `posformer plot` (its fonts: fonts-dejavu-core, a Depends)
  fortunes fortunes-zh python3 python3-matplotlib
  # vision (arch vit, docs/vision.md): Fashion-MNIST, 70,000 28x28 images in IDX format, in
  # /usr/share/datasets/fashion-mnist
  dataset-fashion-mnist
  # tests: the PyTorch twins (oracle), numpy, the formatting check, and Google Benchmark so that
  # the test build compiles the benchmark program too
  python3-torch python3-numpy clang-format libbenchmark-dev
)
# bench: Node.js + npm for ONNX Runtime (npm package onnxruntime-node); the PyTorch peer uses
# python3-torch above; lscpu (util-linux) is essential on Debian.
# NodeSource's nodejs bundles npm and conflicts with Debian's npm package: an npm already on
# PATH is used as it is.
if [ "$BENCH" = 1 ]; then
  PKGS+=(nodejs)
  command -v npm >/dev/null 2>&1 || PKGS+=(npm)
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
      echo "setup: not root and no sudo: as root, run apt-get install ${missing[*]}" >&2
      exit 1
    }
    SUDO=(sudo)
  fi
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: dependencies present"
