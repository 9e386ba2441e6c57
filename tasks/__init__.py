"""ferry's public API: the queue side, as a program uses it::

    from tasks import Ferry, Settings
    ferry = Ferry(Settings.from_env())
    ferry.migrate("web", to="node2").wait(timeout=60).state    # State.DONE

The names below are loaded on first use, so that importing one of ferry's
pure modules (``tasks.core.*``) never loads Celery or Redis.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "Ferry": "tasks.api.client",
    "MigrationHandle": "tasks.api.handles",
    "EvacuationHandle": "tasks.api.handles",
    "Settings": "tasks.config.settings",
    "Migration": "tasks.core.migration",
    "State": "tasks.core.migration",
    "Phase": "tasks.core.migration",
    "Unplaceable": "tasks.core.evacplan",
    "NodeRecord": "tasks.core.nodes",
    "ContainerInfo": "workers.records",
    **{
        name: "workers.errors"
        for name in (
            "FerryError",
            "TransientError",
            "PermanentError",
            "BadRequest",
            "NodeUnavailable",
            "TransferError",
            "UnknownNode",
            "UnknownContainer",
            "CapabilityError",
            "TokenError",
            "IntegrityError",
            "NoSpace",
            "CriuError",
            "Superseded",
            "TooLate",
        )
    },
}
__all__ = [
    "BadRequest",
    "CapabilityError",
    "ContainerInfo",
    "CriuError",
    "EvacuationHandle",
    "Ferry",
    "FerryError",
    "IntegrityError",
    "Migration",
    "MigrationHandle",
    "NoSpace",
    "NodeRecord",
    "NodeUnavailable",
    "Phase",
    "PermanentError",
    "Settings",
    "State",
    "Superseded",
    "TokenError",
    "TooLate",
    "TransferError",
    "TransientError",
    "Unplaceable",
    "UnknownContainer",
    "UnknownNode",
]

if TYPE_CHECKING:  # what a type checker sees; at run time __getattr__ loads them
    from tasks.api.client import Ferry
    from tasks.api.handles import EvacuationHandle, MigrationHandle
    from tasks.config.settings import Settings
    from tasks.core.evacplan import Unplaceable
    from tasks.core.migration import Migration, Phase, State
    from tasks.core.nodes import NodeRecord
    from workers.errors import (
        BadRequest,
        CapabilityError,
        CriuError,
        FerryError,
        IntegrityError,
        NodeUnavailable,
        NoSpace,
        PermanentError,
        Superseded,
        TokenError,
        TooLate,
        TransferError,
        TransientError,
        UnknownContainer,
        UnknownNode,
    )
    from workers.records import ContainerInfo


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
