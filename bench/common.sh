# Shared by the bench scripts (sourced): the peers' BLAS.
#
# Debian's torch 1.13 calls sgemm from libblas.so.3. The peers' figures assume Debian's OpenBLAS;
# where the system's libblas.so.3 is netlib's reference BLAS (no libopenblas0 installed,
# ~0.5 GFLOP/s, which would make any comparison meaningless), Debian's libopenblas0-pthread
# package is unpacked into the work dir (nothing is installed, this machine's alternatives are
# left alone) and put first on the peers' library path.
#
#   peer_blas_setup WORKDIR   sets PEER_LD ("" when the system BLAS is already OpenBLAS)
#   peer_env CMD ARGS...      runs CMD with that library path

peer_blas_setup() {
  local work=$1 ob
  PEER_LD=""
  if readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null | grep -q openblas; then
    return 0
  fi
  ob=$work/openblas/usr/lib/x86_64-linux-gnu/openblas-pthread
  if [ ! -f "$ob/libblas.so.3" ]; then
    echo "bench: libblas.so.3 is not OpenBLAS; unpacking Debian's libopenblas0-pthread into $work/openblas" >&2
    mkdir -p "$work"
    if ! (cd "$work" && rm -f libopenblas0-pthread_*.deb && apt-get download libopenblas0-pthread >&2 &&
          dpkg -x libopenblas0-pthread_*.deb "$work/openblas"); then
      echo "bench: could not fetch libopenblas0-pthread; PyTorch would run on the reference BLAS" >&2
      return 1
    fi
  fi
  PEER_LD=$ob
  echo "bench: PyTorch's BLAS: Debian OpenBLAS from $ob (LD_LIBRARY_PATH)" >&2
}

peer_env() {
  if [ -n "${PEER_LD:-}" ]; then
    env LD_LIBRARY_PATH="$PEER_LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"
  else
    "$@"
  fi
}
