"""A rootfs for OCI tests, built from this host: no registry, no image.

The host's python3, the libraries ``ldd`` lists for it, and the pure-Python
top of its standard library (enough for ``python3 -S``): about 18 MiB.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PYTHON = "/usr/bin/python3"
COUNTER = (  # a counter that checks its memory on every tick
    "import time\ndata = bytearray(b'x') * (16 << 20)\ni = 0\nwhile True:\n"
    "    ok = data.count(b'x') == len(data)\n"
    "    print('tick' if ok else 'corrupt', i, flush=True)\n"
    "    i += 1\n    time.sleep(0.05)\n"
)


def build_rootfs(dest: Path) -> Path:
    """``dest`` made into a rootfs that runs :data:`COUNTER` (kept if already built)."""
    if (dest / "usr/bin/python3").exists():
        return dest
    real = Path(PYTHON).resolve()
    libs = subprocess.run(["ldd", str(real)], capture_output=True, text=True, check=True).stdout
    files = [real] + [Path(w) for w in libs.split() if w.startswith("/")]
    for f in files:
        (dest / f.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f.resolve(), dest / f.relative_to("/"))
    (dest / "usr/bin/python3").unlink(missing_ok=True)
    (dest / "usr/bin/python3").symlink_to(real.name)
    lib = Path("/usr/lib") / real.name  # /usr/lib/python3.11: its standard library
    target = dest / lib.relative_to("/")
    target.mkdir(parents=True, exist_ok=True)
    for py in lib.glob("*.py"):
        shutil.copy2(py, target / py.name)
    shutil.copytree(lib / "encodings", target / "encodings", dirs_exist_ok=True)
    for d in ("proc", "dev", "sys", "tmp"):
        (dest / d).mkdir(exist_ok=True)
    return dest


def counter_argv() -> list[str]:
    return ["/usr/bin/python3", "-S", "-u", "-c", COUNTER]


if __name__ == "__main__":
    print(build_rootfs(Path(sys.argv[1])))
