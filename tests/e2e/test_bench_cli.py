#!/usr/bin/python3
"""posformer bench attention: rows per case, GFLOP/s from the variant's cost, peak extra memory
that follows the saved state (the fused softmax keeps B*H*T floats; the unfused one,
POSFORMER_ATTN_UNFUSED=1, keeps P: B*H*T*T floats), clear errors.
Usage: test_bench_cli.py --posformer PATH"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--posformer", required=True)
PF = os.path.abspath(ap.parse_args().posformer)
fails = 0


def check(name, fn):
    global fails
    try:
        fn()
        print(f"PASS  {name}", flush=True)
    except AssertionError as e:
        fails += 1
        print(f"FAIL  {name}: {e}", flush=True)


class Result:
    def __init__(self, rc, out, err):
        self.returncode, self.stdout, self.stderr = rc, out, err


def bench(*args):
    return Result(*e2e_util.run_cli([PF, "bench", "attention", *map(str, args)], timeout=300))


def rows_by_case(unfused):
    os.environ["POSFORMER_ATTN_UNFUSED"] = "1" if unfused else "0"
    try:
        p = bench("--json", "--seq-lens", "256,1024", "--masks", "both", "--heads", 2, "--head-dim", 16,
                  "--reps", 1, "--threads", 2)
    finally:
        del os.environ["POSFORMER_ATTN_UNFUSED"]
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


check("bench attention: rows, GFLOP/s, memory follows the saved state (P unfused, O(T) fused)",
      t_rows_and_memory)
check("bench attention: table names the CPU; bad variant / lengths / heads named", t_table_and_errors)
print(f"{2 - fails} passed, {fails} failed")
sys.exit(1 if fails else 0)
