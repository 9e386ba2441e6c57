"""The ``ferry`` command.

Exit codes: 0 ok; 1 the operation failed (a migration rolled back, an
evacuation left containers behind, ...); 2 bad input (nothing was changed,
also: an evacuation refused because a container has no destination); 3 a
broker, node or coordinator is unreachable; 4 gave up waiting (or an
evacuation's timeout ended it). Every command takes ``--json``.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import os
import sys
from typing import Any, NoReturn

import click
from redis.exceptions import RedisError
from rich.markup import escape

from tasks.api import cluster_commands, container_commands, migration_commands
from tasks.api.console import err
from tasks.api.demo import run_demo
from tasks.config import broker
from tasks.config.settings import Settings
from tasks.messaging.app import make_app
from workers.errors import EXIT_UNAVAILABLE, BadRequest, FerryError

# Commands defined beside what they run, imported only when named: Prometheus's
# client and CRIU's probe are not what `ferry ps` should pay for at start-up.
LAZY = {"metrics": "tasks.control.metrics:command", "doctor": "tasks.api.doctor:doctor"}


class FerryGroup(click.Group):
    """Turns FerryError into ``error: message`` and its documented exit code; loads
    the :data:`LAZY` commands when they are named."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY:
            return super().get_command(ctx, cmd_name)
        module, _, attr = LAZY[cmd_name].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FerryError as exc:
            fail(str(exc), exc.exit_code)
        except RedisError as exc:  # the state store (or a Redis broker) is away
            fail(f"cannot reach Redis: {exc} (is it running? FERRY_REDIS_URL)", EXIT_UNAVAILABLE)


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


@click.group(cls=FerryGroup)
def main() -> None:
    """ferry: live-migrate containers between the nodes of a cluster."""


# Flower's task columns, the node (worker) first where a 1400 px screen shows it: args
# are (migration, step); a running phase's result is its progress, with its ETA.
FLOWER_COLUMNS = "name,worker,state,args,result,started,runtime,uuid"


verbose_opt = click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Log every task and Celery's banner (FERRY_LOG_LEVEL=INFO); quiet by default.",
)


def daemon_settings(verbose: bool) -> Settings:
    if verbose:
        os.environ["FERRY_LOG_LEVEL"] = "INFO"  # the node's Celery workers inherit it
    s = Settings.from_env()
    logging.basicConfig(level=s.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return s


@main.command()
@click.option("--node", required=True, help="This node's name (lowercase, digits, '-').")
@verbose_opt
def worker(node: str, verbose: bool) -> None:
    """Run this node's workers, data-plane listener and heartbeat."""
    from tasks.node import worker as node_worker  # noqa: PLC0415 (the node side, for nodes only)

    sys.exit(node_worker.serve(daemon_settings(verbose), node))


@main.command()
@click.option("--concurrency", default=4, show_default=True)
@verbose_opt
def coordinator(concurrency: int, verbose: bool) -> None:
    """Run the coordinator (consumes ferry.control and ferry.control.ticks)."""
    from tasks.control import coordinator as control  # noqa: PLC0415 (Celery's worker machinery)

    control.serve(daemon_settings(verbose), concurrency)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option(
    "--basic-auth",
    envvar="FERRY_FLOWER_AUTH",
    default="",
    help="user:password (env FERRY_FLOWER_AUTH).",
)
@click.option(
    "--no-auth", is_flag=True, help="Serve without a password: only on a loopback --address."
)
@verbose_opt
def flower(port: int, address: str, basic_auth: str, no_auth: bool, verbose: bool) -> None:
    """Run Flower on ferry's broker (the tasks page lists each phase's args and progress)."""
    check_flower_auth(address, basic_auth, no_auth)
    s = daemon_settings(verbose)
    app = make_app(broker.resolve(s))
    argv = ["flower", f"--port={port}", f"--address={address}", f"--tasks_columns={FLOWER_COLUMNS}"]
    # quiet unless -v: its start-up lists this app's tasks (none: the nodes define them),
    # and every inspect round that no worker answered yet is a warning
    argv.append("--logging=" + ("info" if s.log_level.upper() in ("DEBUG", "INFO") else "error"))
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    where = "localhost" if address in ("127.0.0.1", "::1") else address
    print(
        f"ferry: Flower on http://{where}:{port}: each phase a task, as the nodes run them",
        file=sys.stderr,
        flush=True,
    )
    app.start(argv)


def check_flower_auth(address: str, basic_auth: str, no_auth: bool) -> None:
    """Flower shows every task and can revoke them: never without a password, except
    on loopback when asked for plainly."""
    if basic_auth:
        if ":" not in basic_auth or basic_auth.startswith(":") or basic_auth.endswith(":"):
            raise BadRequest("--basic-auth wants user:password")
        return
    if not no_auth:
        raise BadRequest(
            "ferry flower needs --basic-auth user:password (or FERRY_FLOWER_AUTH); "
            "--no-auth serves without one, on a loopback --address only"
        )
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = address == "localhost"
    if not loopback:
        raise BadRequest(
            f"--no-auth on {address}: without a password Flower listens on loopback only"
        )


@main.command()
def down() -> None:
    """Stop this state dir's embedded Redis (after the tour: stop workers first)."""
    s = Settings.from_env()
    if s.broker_url or s.redis_url:
        raise BadRequest(
            "ferry uses the Redis of FERRY_BROKER_URL/FERRY_REDIS_URL: nothing to stop"
        )
    if not (s.state_dir / "redis.sock").exists():
        err.print(f"no embedded Redis runs in {s.state_dir}")
        return
    broker.stop_embedded(s.state_dir)
    err.print(
        f"stopped the embedded Redis of {s.state_dir} (its records stay in its append-only file)"
    )


@main.command()
@click.option("--nodes", "count", default=3, show_default=True)
@click.option("--keep", is_flag=True, help="Leave the demo cluster running.")
@click.option("--flower-port", default=5555, show_default=True)
def demo(count: int, keep: bool, flower_port: int) -> None:
    """Migrate a counting container across a cluster of nodes on this machine."""
    sys.exit(run_demo(count, keep, flower_port))


for command in (
    cluster_commands.nodes,
    cluster_commands.ps,
    cluster_commands.run,
    container_commands.stop,
    container_commands.rm,
    container_commands.logs,
    container_commands.adopt,
    container_commands.release,
    migration_commands.migrate,
    migration_commands.status,
    migration_commands.watch,
    migration_commands.cancel,
    migration_commands.resolve,
    cluster_commands.cordon,
    cluster_commands.uncordon,
    cluster_commands.evacuate,
):
    main.add_command(command)

if __name__ == "__main__":
    main()
