"""What every ``ferry`` command shares: the consoles, the client, JSON or tables."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from tasks.api.client import Ferry
from tasks.config.settings import Settings

err = Console(stderr=True)
out = Console()
json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def ferry_client() -> Ferry:
    """A client on the cluster the environment (FERRY_*) names."""
    return Ferry(Settings.from_env())


def emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    """``data`` as JSON for scripts, else what ``human`` prints."""
    if as_json:
        click.echo(json.dumps(data, default=str, indent=1))
    else:
        human()


class Positive(click.ParamType[float]):
    """A finite number > 0 (click's FloatRange lets NaN through)."""

    name = "number"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not 0 < number < math.inf:
            self.fail(f"{value!r} is not a finite number > 0", param, ctx)
        return number


POSITIVE = Positive()


class Label(click.ParamType[tuple[str, str]]):
    """KEY=VALUE, the key not empty (the node checks what the labels mean)."""

    name = "label"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, eq, val = str(value).partition("=")
        if not eq or not key.strip():
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        return key.strip(), val


LABEL = Label()


def yn(v: Any) -> str:
    return "yes" if v else "no"


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# Columns that hold what a user types back (ids, names): never cut, never wrapped.
WHOLE = {"id", "container", "node", "evacuation"}


def table(*headers: str) -> Table:
    """A table for an 80-column terminal: no vertical rules, ids and names whole
    (the other columns shrink or wrap first)."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for h in headers:
        whole = h in WHOLE
        t.add_column(h, no_wrap=whole, overflow="fold", min_width=len(h) if not whole else None)
    return t
