"""Node records for unit tests, written as the JSON a worker publishes and read
through the codec, as the store reads them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.core.codec import decode
from tasks.core.nodes import NodeRecord


def node_record(data: Mapping[str, Any]) -> NodeRecord:
    return decode(NodeRecord, data)
