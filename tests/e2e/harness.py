"""The torch-free harness of the end-to-end CLI tests: the --posformer/--keep arguments, a scratch
directory, running the CLI, one `PASS  name  (1.2s)` / `FAIL  name: why` line per check, and the
`N passed, M failed` total with its exit status. e2e_util.py (the twins' helpers, with torch)
re-exports run_cli, require_cli and Report from here.

    h = harness.Harness("posformer_cost_", __doc__)
    h.check("info agrees", lambda: ...)
    h.finish()
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


class Failure(Exception):
    pass


def run_cli(args, timeout=300):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def shell_quote(x):
    return "'" + str(x).replace("'", "'\\''") + "'"


def require_cli(path):
    """Absolute path of the posformer CLI, or a failed run when it is not there."""
    cli = os.path.abspath(path)
    if not os.access(cli, os.X_OK):
        print(f"posformer CLI not found or not executable: {cli}")
        print("0 passed, 1 failed")
        sys.exit(1)
    return cli


def metrics(run_dir):
    """The records of a run's metrics.jsonl, in order."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(run_dir):
    """(step, loss) of every training-step record of a run."""
    return [(r["step"], r["loss"]) for r in metrics(run_dir) if "loss" in r]


class Report:
    """One `PASS|FAIL  name  text` line per check; finish() prints the totals and exits 1 when
    anything failed."""

    def __init__(self, width):
        self.width, self.passed, self.failed, self.failures = width, 0, 0, []

    def __call__(self, name, ok, text):
        print(f"{'PASS' if ok else 'FAIL'}  {name:{self.width}s} {text}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append(name)

    def selfchecks(self, checks):
        """checks: (name, fn) with fn() -> (error, ok)."""
        import traceback
        for name, fn in checks:
            try:
                err, ok = fn()
                self(name, ok, f"err {err:.2e}")
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                self(name, False, f"exception {e}")

    def finish(self, footer=None):
        if self.failures:
            print("failed:", " ".join(self.failures))
        if footer:
            print(footer)
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed else 0)


class Harness:
    """Parses --posformer PATH [--keep] (plus --only TEXT with only=True: run only the checks
    whose name contains TEXT), makes the scratch directory `dir` (removed by finish() unless
    --keep) and counts the checks. env: variables set for every run on top of os.environ as it
    is at the time of the run; timeout: run()'s default in seconds."""

    def __init__(self, prefix, description=None, timeout=600, env=None, only=False):
        ap = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--posformer", required=True)
        ap.add_argument("--keep", action="store_true")
        if only:
            ap.add_argument("--only", help="run only the checks whose name contains this text")
        self.args = ap.parse_args()
        self.pf = os.path.abspath(self.args.posformer)
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.timeout, self.env, self.results = timeout, dict(env or {}), []

    def environ(self):
        """The CLI's environment: this process's, with the `env` given to the harness on top."""
        return dict(os.environ, **self.env)

    def run(self, *a, ok=True, timeout=None, binary=False):
        """`posformer A...` (each argument str()-ed). p.out, p.err: the output decoded (UTF-8,
        bad bytes replaced), also in p.stdout, p.stderr unless binary; p.seconds: its wall time.
        With ok, a nonzero exit status raises, showing the end of stderr."""
        a = [str(x) for x in a]
        t0 = time.time()
        p = subprocess.run([self.pf, *a], capture_output=True, env=self.environ(),
                           timeout=self.timeout if timeout is None else timeout)
        p.seconds = time.time() - t0
        p.out, p.err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
        if not binary:
            p.stdout, p.stderr = p.out, p.err
        if ok and p.returncode != 0:
            raise AssertionError(f"posformer {' '.join(a)} failed ({p.returncode}):\n{p.err[-2000:]}")
        return p

    def check(self, name, fn):
        """Runs fn(); any exception is a FAIL with its message."""
        only = getattr(self.args, "only", None)
        if only and only not in name:
            return
        t0 = time.time()
        try:
            fn()
            self.results.append(True)
            print(f"PASS  {name}  ({time.time() - t0:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure
            self.results.append(False)
            print(f"FAIL  {name}: {e}", flush=True)

    def expect(self, ok, what):
        """Records a condition already evaluated: `PASS  what` or `FAIL  what`."""
        print(("PASS  " if ok else "FAIL  ") + what, flush=True)
        self.results.append(bool(ok))

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, obj):
        """Writes obj (str or bytes as it is, anything else as JSON) to `name` in the scratch
        directory (an absolute name stands as it is); returns the path."""
        path = os.path.join(self.dir, name)
        binary = isinstance(obj, (bytes, bytearray))
        with open(path, "wb" if binary else "w") as f:
            f.write(obj if binary or isinstance(obj, str) else json.dumps(obj))
        return path

    def finish(self):
        passed = sum(self.results)
        print(f"{passed} passed, {len(self.results) - passed} failed")
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print("kept", self.dir)
        sys.exit(0 if passed == len(self.results) else 1)
