"""Conversion between Python values and poolside.v1.Value."""

import datetime
import decimal
import json

from proto.poolside.v1 import common_pb2

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class Json:
    """Marks a value to be sent as JSON (json_value), e.g. Json({"tier": "pro"})."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"Json({self.value!r})"

    def __eq__(self, other):
        return isinstance(other, Json) and other.value == self.value


def to_value(v):
    """A poolside.v1.Value for a Python value.

    None -> NULL, bool, int (64-bit), float, str -> text, bytes -> bytes,
    datetime (timezone-aware) -> timestamp, Decimal -> numeric, Json -> json.
    A naive datetime is refused: say which zone it is in.
    """
    out = common_pb2.Value()
    if v is None:
        out.null_value = common_pb2.NULL_VALUE
    elif isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise ValueError(f"integer {v} does not fit in 64 bits; send it as decimal.Decimal")
        out.int64_value = v
    elif isinstance(v, float):
        out.double_value = v
    elif isinstance(v, str):
        out.text_value = v
    elif isinstance(v, (bytes, bytearray, memoryview)):
        out.bytes_value = bytes(v)
    elif isinstance(v, datetime.datetime):
        if v.tzinfo is None or v.tzinfo.utcoffset(v) is None:
            raise ValueError(f"naive datetime {v.isoformat()}: attach a timezone (e.g. tzinfo=timezone.utc)")
        delta = v - _EPOCH
        out.timestamp_value.seconds = delta.days * 86400 + delta.seconds
        out.timestamp_value.nanos = delta.microseconds * 1000
    elif isinstance(v, decimal.Decimal):
        out.numeric_value = str(v)
    elif isinstance(v, Json):
        out.json_value = json.dumps(v.value)
    elif isinstance(v, common_pb2.Value):
        out.CopyFrom(v)
    else:
        raise TypeError(f"cannot send a {type(v).__name__} as a poolside value")
    return out


def from_value(v):
    """The Python value of a poolside.v1.Value (see to_value; json is parsed)."""
    kind = v.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "timestamp_value":
        ts = v.timestamp_value
        return _EPOCH + datetime.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)
    if kind == "numeric_value":
        return decimal.Decimal(v.numeric_value)
    if kind == "json_value":
        return json.loads(v.json_value)
    return getattr(v, kind)


def to_row(values):
    row = common_pb2.Row()
    row.values.extend(to_value(v) for v in values)
    return row


def from_row(row):
    return tuple(from_value(v) for v in row.values)
