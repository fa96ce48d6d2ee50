# Copied unchanged from ../shared/peers/torch_env.py (the peers' fair PyTorch settings) for bench/vit_bench.py.
"""Runtime settings for Debian's torch 1.13.1 on a 2-core box; call setup() BEFORE `import torch`.

Each default below was measured to matter on the reference machine (see README):
  OPENBLAS_CORETYPE  OpenBLAS 0.3.21 autodetects this CPU (family 6 model 207) as 'Prescott'
                     (SSE3 kernels, ~57 GFLOP/s); SapphireRapids (-> Cooperlake kernels) ~260.
  OMP_WAIT_POLICY    torch's OpenMP workers and OpenBLAS's pthreads both spin-wait after work;
                     on 2 cores each starves the other. PASSIVE: BERT layer seq128 ~32 -> ~10 ms.
  malloc 'nommap'    glibc mmaps every block > 32 MB, so big activations page-fault anew on every
                     call; mallopt(M_MMAP_MAX=0) keeps them in the heap (attention n=2048: 2x).
"""
import ctypes
import os


def add_args(p):
    p.add_argument("--openblas-coretype", default="SapphireRapids", help="'auto' = OpenBLAS's own detection")
    p.add_argument("--omp-wait-policy", default="PASSIVE", help="PASSIVE or ACTIVE")
    p.add_argument("--malloc", default="nommap", choices=("nommap", "glibc"))
    p.add_argument("--stock", action="store_true", help="all three at their stock values (auto, ACTIVE, glibc)")


def setup(args, threads=2):
    if args.stock:
        args.openblas_coretype, args.omp_wait_policy, args.malloc = "auto", "ACTIVE", "glibc"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    if args.openblas_coretype != "auto":
        os.environ["OPENBLAS_CORETYPE"] = args.openblas_coretype
    else:
        os.environ.pop("OPENBLAS_CORETYPE", None)
    if args.malloc == "nommap":
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: never serve malloc from fresh mmaps
        libc.mallopt(-1, 2 ** 31 - 1)  # M_TRIM_THRESHOLD: keep freed heap for reuse
    return (f"OPENBLAS_CORETYPE={args.openblas_coretype} OMP_WAIT_POLICY={args.omp_wait_policy} "
            f"malloc={args.malloc} threads={threads}")
