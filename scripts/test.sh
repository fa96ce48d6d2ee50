#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: installs dependencies, checks formatting,
# builds (Release, warnings as errors), runs every test (unit + PyTorch twin + CLI end-to-end),
# then builds again with -fsanitize=address,undefined and runs the C++ tests there too.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh

echo "== clang-format check"
files=$(git ls-files '*.h' '*.cpp' 2>/dev/null || find include src tools tests bench -name '*.h' -o -name '*.cpp')
clang-format --dry-run -Werror $files

echo "== Release build"
bash scripts/build.sh "$ROOT/build" -DPOSFORMER_WERROR=ON
echo "== tests (Release)"
(cd build && ctest --output-on-failure -j1 --timeout 1200)

echo "== sanitizer build (address, undefined)"
bash scripts/build.sh "$ROOT/build-asan" -DPOSFORMER_SANITIZE=ON -DPOSFORMER_WERROR=ON -DPOSFORMER_BUILD_BENCH=OFF
echo "== tests (sanitizers)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure -j1 --timeout 1200 -E '^e2e[.]')
echo "== all tests passed"
