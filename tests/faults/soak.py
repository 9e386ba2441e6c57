"""The fault soak: many rounds, a random fault in a random phase of a random strategy.

    sudo .venv/bin/python -m tests.faults.soak --rounds 40 [--seed 7]

Each round migrates a dirtying counter between two real-CRIU nodes while one
armed failpoint kills the worker of one phase (workers.failpoints), then
checks what tests/faults checks: exactly one copy runs, its counter went on,
no image dir is left, the record is final with the fault in it. Prints the
table at the end; exits 1 unless lost, duplicated and unfinished are all 0.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from tasks.broker import stop_embedded
from tasks.demo import criu_usable
from tests.conftest import running
from tests.faults.cluster import COLD, DELTA, NODES, POSTCOPY, FaultCluster, outcome
from tests.faults.conftest import fault_env
from tests.faults.tally import TALLY
from tests.integration.helpers import dirtying, ticks, wait_for

PLAN = {"cold": COLD, "postcopy": POSTCOPY, "delta": DELTA}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/soak.json"))
    args = ap.parse_args()
    ok, why = criu_usable()
    if not ok:
        print(f"soak: {why}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="ferry-soak-"))
    sock = base / "redis.sock"
    c = FaultCluster(base, fault_env(f"redis+socket://{sock}", str(base / "failpoints")))
    from tasks.broker import ensure_embedded

    ensure_embedded(base)
    c.disarm()
    rounds, failures = [], 0
    started = time.monotonic()
    with running(c, list(NODES)):
        for i in range(args.rounds):
            strategy = rng.choice(sorted(PLAN))
            point = rng.choice(PLAN[strategy])
            src, dst = ("f1", "f2") if i % 2 == 0 else ("f2", "f1")
            name = f"soak-{i}"
            info = c.client.run(src, [sys.executable, "-u", "-c", dirtying(rng.choice([8, 32]))],
                                name=name)
            log = info["log"]
            wait_for(lambda log=log: len(ticks(log)) > 3)
            c.arm(point)
            t0 = time.monotonic()
            try:
                handle = c.client.migrate(name, dst, strategy=strategy)
                handle.wait(timeout=180)
                result = outcome(c, name, info["log"], handle.id)
            except (AssertionError, TimeoutError) as exc:
                failures += 1
                result = f"FAILED: {exc}"
            finally:
                c.disarm()
            rounds.append({"round": i, "strategy": strategy, "fault": point,
                           "outcome": result, "seconds": round(time.monotonic() - t0, 2)})
            print(f"{i:3} {strategy:8} {point:22} {result} ({rounds[-1]['seconds']} s)", flush=True)
            c.client.kill(name)
    stop_embedded(base)
    print("soak: " + ", ".join(f"{k} {v}" for k, v in TALLY.items()) +
          f", checks failed {failures}, seed {args.seed}, {time.monotonic() - started:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "tally": TALLY, "failures": failures,
                                    "rounds": rounds}, indent=1))
    bad = TALLY["containers lost"] + TALLY["containers duplicated"] + \
        TALLY["migrations without a final state"] + failures
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
