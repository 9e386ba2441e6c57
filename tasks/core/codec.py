"""One serializer for ferry's records: typed dataclasses to JSON and back.

:func:`encode` turns a record (dataclasses, enums, tuples, dicts, numbers,
strings) into JSON-able data; :func:`decode` reads such data back into the
type it names, field by field from the type hints, and raises
:class:`CorruptRecord` naming the field when the data is not of that type.
Unknown keys are ignored (a newer ferry may add fields); missing fields take
their defaults.

>>> from tasks.core.machine import Migration
>>> m = Migration("m-0123456789ab", "web", "pi1", "pi2", strategy="delta", sync=("/srv/a",))
>>> data = encode(m)
>>> data["strategy"], data["sync"], data["options"]["compression"]
('delta', ['/srv/a'], 'auto')
>>> decode(Migration, data) == m
True
>>> decode(Migration, {**data, "state": "lost"})
Traceback (most recent call last):
...
workers.errors.CorruptRecord: Migration.state: 'lost' is not a valid State
>>> decode(Migration, {**data, "attempt": "3"})
Traceback (most recent call last):
...
workers.errors.CorruptRecord: Migration.attempt: want int, not '3'
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from workers.errors import BadRequest, CorruptRecord

T = TypeVar("T")


def encode(value: Any) -> Any:
    """JSON-able data for ``value``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(encode(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def decode(kind: type[T], data: Any, where: str = "") -> T:
    """``data`` read back as a ``kind``; CorruptRecord if it is not one."""
    return typing.cast(T, _decode(kind, data, where or getattr(kind, "__name__", str(kind))))


def _decode(kind: Any, data: Any, where: str) -> Any:
    if kind in _SCALARS:  # most fields: nothing to resolve
        return _scalar(kind, data, where)
    origin, args, record = _shape(kind)
    if kind is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _decode(option, data, where)
            except CorruptRecord:
                continue
        return _decode(options[-1], data, where)
    if origin is typing.Literal:
        if data not in args:
            raise CorruptRecord(f"{where}: {data!r} is not one of {', '.join(map(repr, args))}")
        return data
    if record:
        if not isinstance(data, Mapping):
            raise CorruptRecord(f"{where}: want an object, not {type(data).__name__}")
        values = {
            name: _decode(hint, data[name], f"{where}.{name}")
            for name, hint in _fields(kind)
            if name in data
        }
        try:
            return kind(**values)
        except (TypeError, ValueError, BadRequest) as exc:  # a field missing, or refused
            raise CorruptRecord(f"{where}: {exc}") from exc
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(data)
        except ValueError as exc:
            raise CorruptRecord(f"{where}: {exc}") from exc
    if origin in (tuple, list, frozenset, set):
        if not isinstance(data, list | tuple):
            raise CorruptRecord(f"{where}: want a list, not {type(data).__name__}")
        item = args[0] if args else Any
        items = [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
        return items if origin is list else origin(items)
    if origin in (dict, Mapping):
        if not isinstance(data, Mapping):
            raise CorruptRecord(f"{where}: want an object, not {type(data).__name__}")
        value = args[1] if args else Any
        return {k: _decode(value, v, f"{where}[{k!r}]") for k, v in data.items()}
    return _scalar(kind, data, where)


_SCALARS = frozenset({int, str, bool, float, type(None)})


@functools.cache
def _shape(kind: Any) -> tuple[Any, tuple[Any, ...], bool]:
    """A hint's origin, its arguments, and whether it is a dataclass."""
    record = isinstance(kind, type) and dataclasses.is_dataclass(kind)
    return typing.get_origin(kind), typing.get_args(kind), record


@functools.cache
def _fields(kind: type) -> tuple[tuple[str, Any], ...]:
    """A dataclass's init fields with their resolved hints: resolving them is most of a
    decode's cost (a tick reads thousands of records), and a class's hints never change."""
    hints = typing.get_type_hints(kind)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(kind) if f.init)


def _scalar(kind: Any, data: Any, where: str) -> Any:
    if kind is float and isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if kind in (int, str, bool) and type(data) is kind:
        return data
    if kind is type(None) and data is None:
        return None
    raise CorruptRecord(f"{where}: want {getattr(kind, '__name__', kind)}, not {data!r:.60}")
