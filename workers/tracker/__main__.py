"""``python -m workers.tracker --pid PID --dir DIR``: the tracker process (workers.tracker.service)."""

from __future__ import annotations

import argparse
from pathlib import Path

from workers.tracker.service import serve

parser = argparse.ArgumentParser(prog="python -m workers.tracker")
parser.add_argument("--pid", type=int, required=True, help="the root of the tree to track")
parser.add_argument("--dir", type=Path, required=True, help="the migration's images dir")
parser.add_argument("--idle", type=float, default=3600.0, help="end after this long unasked (s)")
args = parser.parse_args()
serve(args.pid, args.dir, args.idle)
