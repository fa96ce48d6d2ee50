#!/usr/bin/python3
"""posformer bench attention: rows per case, GFLOP/s from the variant's cost, peak extra memory
that follows the saved state (the fused softmax keeps B*H*T floats; the unfused one,
POSFORMER_ATTN_UNFUSED=1, keeps P: B*H*T*T floats), clear errors.
Usage: test_bench_cli.py --posformer PATH [--keep]"""
import json
import os
import subprocess

import harness

h = harness.Harness("posformer_bench_", __doc__, timeout=300, env={"OMP_NUM_THREADS": "2"})
check = h.check


def bench(*args):
    return h.run("bench", "attention", *args, ok=False)


def rows_by_case(unfused):
    os.environ["POSFORMER_ATTN_UNFUSED"] = "1" if unfused else "0"
    # under AddressSanitizer its quarantine would keep freed tiles resident, counted as memory
    asan = os.environ.get("ASAN_OPTIONS")
    os.environ["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "quarantine_size_mb=0"
    try:
        p = bench("--json", "--seq-lens", "256,1024", "--masks", "both", "--heads", 2, "--head-dim", 16,
                  "--reps", 1, "--threads", 2)
    finally:
        del os.environ["POSFORMER_ATTN_UNFUSED"]
        if asan is None:
            del os.environ["ASAN_OPTIONS"]
        else:
            os.environ["ASAN_OPTIONS"] = asan
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 4, p.stdout
    for r in rows:
        for k in ("forward_ms", "forward_gflops", "backward_ms", "backward_gflops", "extra_mib"):
            assert k in r and r[k] > 0, (k, r)
    return {(r["T"], r["causal"]): r for r in rows}


def t_rows_and_memory():
    # unfused: forward + backward keep P [1, 2, T, T]: 8 MiB at T = 1024, 0.5 MiB at 256
    un = rows_by_case(True)
    big, small = un[(1024, False)]["extra_mib"], un[(256, False)]["extra_mib"]
    assert big >= 7.5 and big > 4 * small, (big, small)
    # fused: the rows' log-sum-exp (8 KiB) and per-thread tiles, far below P's 8 MiB
    by = rows_by_case(False)
    assert by[(1024, False)]["extra_mib"] < 4, by[(1024, False)]
    # causal counts half the pairs: half the FLOPs of the full mask, about
    r_full, r_causal = by[(1024, False)], by[(1024, True)]
    fl = lambda r: r["forward_gflops"] * r["forward_ms"]  # noqa: E731
    assert abs(fl(r_causal) / fl(r_full) - (1024 + 1) / 2048) < 1e-6, (fl(r_causal), fl(r_full))


def t_table_and_errors():
    p = bench("--seq-lens", "64", "--masks", "full", "--heads", 2, "--head-dim", 8, "--reps", 1,
              "--forward-only")
    assert p.returncode == 0 and "softmax" in p.stdout and "GFLOP/s" in p.stdout, p.stdout + p.stderr
    assert "CPU:" in p.stdout, p.stdout  # every speed figure names the CPU
    p = bench("--variants", "softmax,nope", "--seq-lens", "32", "--masks", "full", "--reps", 1)
    assert p.returncode != 0 and 'unknown attention type "nope"' in p.stdout, p.stdout + p.stderr
    p = bench("--seq-lens", "64,x")
    assert p.returncode != 0 and "--seq-lens" in p.stderr and "'x'" in p.stderr, p.stderr
    p = bench("--kv-heads", 5, "--heads", 12, "--seq-lens", 16, "--masks", "full")
    assert p.returncode != 0 and "--kv-heads" in p.stdout + p.stderr, p.stdout + p.stderr


def t_error_mode():
    """--error: nystrom against exact softmax. With landmarks = T and 30 iterations it is softmax
    (error ~1e-6); with few landmarks on iid inputs it is far from it; the CSV holds the rows; a
    variant with no approximation size and a bad series field are refused naming them."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        csv_path = os.path.join(d, "err.csv")
        p = bench("--error", "--variants", "nystrom:pinv_iterations=30,nystrom", "--seq-lens", 48,
                  "--heads", 2, "--head-dim", 8, "--sweep", "4,48", "--inputs", "iid,smooth",
                  "--csv", csv_path, "--threads", 2)
        assert p.returncode == 0, p.stdout + p.stderr
        rows = [line.split(",") for line in open(csv_path).read().split("\n")[1:] if line]
        assert len(rows) == 8, rows
        err = {(r[0], r[4], int(r[3])): float(r[8]) for r in rows}
        for inp in ("iid", "smooth"):
            assert err[("nystrom:pinv_iterations=30", inp, 48)] < 1e-4, err
            assert err[("nystrom", inp, 4)] > 1e-2, err
    p = bench("--error", "--variants", "softmax", "--seq-lens", 16)
    assert p.returncode != 0 and "'softmax'" in p.stderr and "nystrom" in p.stderr, p.stderr
    p = bench("--error", "--variants", "nystrom:pinv_iterations=-1", "--seq-lens", 16)
    assert p.returncode != 0 and "attention.pinv_iterations" in p.stderr, p.stderr
    p = bench("--error", "--variants", "nystrom:conv_kernel=3", "--seq-lens", 16)
    assert p.returncode != 0 and "trained weights" in p.stderr, p.stderr


def t_performer_error_and_no_causal_form():
    """performer's error against softmax falls as its random features grow (fixed seed, drawn as
    at init); nystrom's causal rows read n/a and are not failures."""
    p = bench("--error", "--variants", "performer", "--seq-lens", 64, "--heads", 2, "--head-dim",
              16, "--sweep", "4,64,1024", "--inputs", "iid", "--threads", 2)
    assert p.returncode == 0, p.stdout + p.stderr
    err = [float(line.split()[-1]) for line in p.stdout.splitlines() if line.startswith("performer")]
    assert len(err) == 3 and err[0] > err[1] > err[2], p.stdout
    p = bench("--variants", "nystrom", "--seq-lens", 32, "--masks", "both", "--heads", 2,
              "--head-dim", 8, "--reps", 1, "--forward-only")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "n/a: no causal form" in p.stdout and " full " in p.stdout, p.stdout


def t_bf16_products():
    """--precision bf16: forward-only rows (no backward column) for softmax, the header says which
    implementation ran; other variants, --error and bad values are refused by name; bench peak
    --bf16 adds the dot-product peak (0 where the CPU lacks AVX512-BF16)."""
    p = bench("--seq-lens", "64", "--masks", "both", "--heads", 2, "--head-dim", 16, "--reps", 1,
              "--precision", "bf16", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    assert len(rows) == 2 and all(r["precision"] == "bf16" and r["forward_ms"] > 0 and
                                  "backward_ms" not in r for r in rows), p.stdout
    p = bench("--seq-lens", "64", "--masks", "full", "--heads", 2, "--head-dim", 16, "--reps", 1,
              "--precision", "bf16")
    assert p.returncode == 0 and "bf16 products (" in p.stdout and "forward only" in p.stdout, p.stdout
    p = bench("--variants", "linear", "--seq-lens", "64", "--precision", "bf16")
    assert p.returncode != 0 and "--precision bf16" in p.stderr and "'linear'" in p.stderr, p.stderr
    p = bench("--error", "--variants", "nystrom", "--seq-lens", "16", "--precision", "bf16")
    assert p.returncode != 0 and "--precision bf16" in p.stderr, p.stderr
    p = bench("--seq-lens", "64", "--precision", "fp8")
    assert p.returncode != 0 and "--precision" in p.stderr, p.stderr
    p = h.run("bench", "peak", "--bf16", "--json", "--reps", 1)
    j = json.loads(p.stdout)
    has = "avx512_bf16" in open("/proc/cpuinfo").read()
    assert (j["bf16_dot_gflops"] > 0) == has and j["gflops"] > 0, p.stdout


check("bench attention: rows, GFLOP/s, memory follows the saved state (P unfused, O(T) fused)",
      t_rows_and_memory)
check("bench attention: table names the CPU; bad variant / lengths / heads named", t_table_and_errors)
check("bench attention --error: nystrom vs softmax, CSV, refusals", t_error_mode)
check("bench attention: performer's error falls with features; no causal form is n/a",
      t_performer_error_and_no_causal_form)
check("bench attention --precision bf16 and bench peak --bf16", t_bf16_products)
def t_train_bench_no_torch():
    # bench/train_bench.sh checks NO_TORCH before it installs or runs anything
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "train_bench.sh")
    for bad in ("maybe", "2", "off"):
        p = subprocess.run(["bash", script, h.pf], env=dict(os.environ, NO_TORCH=bad), capture_output=True,
                           text=True, timeout=60)
        assert p.returncode != 0 and f"NO_TORCH must be 1 or 0 (got '{bad}')" in p.stderr, (bad, p.stderr)


check("bench/train_bench.sh: a bad NO_TORCH is named before anything runs", t_train_bench_no_torch)
h.finish()
