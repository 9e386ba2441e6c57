"""The benchmark report in one command: run the benchmarks, regenerate docs/BENCHMARKS.md's tables.

    .venv/bin/python -m benchmarks                  # every benchmark's full run, then the tables
    .venv/bin/python -m benchmarks run scale cold   # these, then the tables
    .venv/bin/python -m benchmarks tables           # only the tables, from docs/benchmarks/*.json
    .venv/bin/python -m benchmarks list             # what a full run runs
    ops/dev bench [...]                             # the same, after setting up the venv

Each benchmark is its own script (``benchmarks/<name>.py``) that writes JSON
(and a PNG where it draws one) under docs/benchmarks/ and prints a table; its
``--markdown`` prints that table from the JSON. In docs/BENCHMARKS.md a table
between ``<!-- table: NAME -->`` and ``<!-- /table: NAME -->`` is the output of
``benchmarks/NAME.py --markdown``: this command rewrites it, so nobody types a
number a script can write. The scripts that need root (real CRIU, the netns
testbed) say so when run without it; the run goes on with the next one. A
full run takes about an hour on the reference VM: each invocation keeps to
10 minutes (its own budget), and the machine should be otherwise quiet.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"

# name: the invocations of its full run (each within 10 min on the reference VM, as its
# JSON or docs/BENCHMARKS.md records), as docs/BENCHMARKS.md gives them; rows of one
# invocation are merged into the JSON by the script, not replaced.
RUNS: dict[str, list[list[str]]] = {
    "cold": [[], ["--testbed"], ["--links", "100mbit", "--sizes", "1024"]],
    "transfer": [["--sizes", "64M,256M,1G", "--repeat", "5"]],
    "page_server": [[]],
    "strategies": [[], ["--sizes", "1024", "--links", "loopback,1gbit,100mbit", "--runs", "5"]],
    "delta": [["--sizes", "64,256", "--rates", "1,10,50"]],
    "evacuate": [[]],
    "fsync": [["--runs", "5"]],
    "scale": [[]],
    "pauses": [[]],
    "footprint": [[]],
    "tcp": [[]],
    "tracker": [["--sizes", "256", "--rates", "1,10", "--runs", "3"]],
    "oci": [[]],
}
# ``scale-64``: benchmarks/scale.py's table of docs/benchmarks/scale-64.json
MARK = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- /table: \2 -->)", re.DOTALL)


def run(names: list[str]) -> list[str]:
    """Run each benchmark's full run in turn; the names that failed."""
    failed = []
    for name in names:
        for args in RUNS[name]:
            cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args]
            print(f"== benchmarks/{name}.py {' '.join(args)}", flush=True)
            t0 = time.monotonic()
            done = subprocess.run(cmd, cwd=ROOT, check=False)
            print(f"== exit {done.returncode} after {time.monotonic() - t0:.0f} s", flush=True)
            if done.returncode != 0:
                failed.append(f"{name} {' '.join(args)}".strip())
    return failed


def tables(doc: Path = DOC) -> list[str]:
    """Rewrite every marked table of ``doc`` from its script's ``--markdown``; the names rewritten."""
    text = doc.read_text()
    done: list[str] = []

    def fill(m: re.Match[str]) -> str:
        table = m.group(2)
        name, variant = table.partition("-")[::2]
        if name not in RUNS:
            raise SystemExit(f"error: {doc} marks a table for unknown benchmark {name!r}")
        its = ["--json", str(ROOT / "docs" / "benchmarks" / f"{table}.json")] if variant else []
        out = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--markdown", *its],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"error: benchmarks/{name}.py --markdown failed: {out.stderr.strip()}")
        done.append(table)
        return m.group(1) + out.stdout.rstrip("\n") + "\n" + m.group(4)

    new = MARK.sub(fill, text)
    if new != text:
        doc.write_text(new)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", default="all", choices=["all", "run", "tables", "list"])
    ap.add_argument("names", nargs="*", help=f"run: any of {', '.join(RUNS)}")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in RUNS]
    if unknown or (args.names and args.command != "run"):
        ap.error(f"name benchmarks only after `run`, from: {', '.join(RUNS)}")
    if args.command == "list":
        for name, invocations in RUNS.items():
            for extra in invocations:
                print(f"benchmarks/{name}.py {' '.join(extra)}".rstrip())
        return 0
    failed = run(args.names or list(RUNS)) if args.command in ("all", "run") else []
    rewritten = tables()
    print(f"docs/BENCHMARKS.md: tables of {', '.join(rewritten) or 'nothing'} regenerated")
    if failed:
        print(
            f"failed: {', '.join(failed)} (their tables show their last good JSON)", file=sys.stderr
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
