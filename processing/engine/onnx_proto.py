"""The fallback without the ``onnx`` package: a minimal edit of an ONNX file's ``metadata_props``.

``onnx_metadata`` uses ``onnx`` where it is installed; tests/test_onnx_model.py checks that both give
the same model.
"""


# --- the fallback without the onnx package: a minimal protobuf edit ------------------------------
# ModelProto field 14 is ``repeated StringStringEntryProto metadata_props`` (key = 1, value = 2).
# Top-level fields may appear in any order, so the file is rewritten field by field: every other
# field is copied verbatim, metadata entries are replaced.

_METADATA_FIELD = 14
_GRAPH_FIELD = 7


def _proto_varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _proto_encode_varint(value):
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | 0x80 if value else b)
        if not value:
            return bytes(out)


def _proto_fields(buf):
    """Yield (field_number, wire_type, start, end, payload_start, payload_end) of a message."""
    pos, n = 0, len(buf)
    while pos < n:
        start = pos
        key, pos = _proto_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _, pos = _proto_varint(buf, pos)
            payload = (pos, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            pos += size
            payload = (pos - size, pos)
        elif wire == 2:
            length, pos = _proto_varint(buf, pos)
            payload = (pos, pos + length)
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > n:
            raise ValueError("truncated field")
        yield number, wire, start, pos, payload[0], payload[1]


def _proto_entry(key, value):
    k, v = key.encode("utf-8"), value.encode("utf-8")
    body = b"\x0a" + _proto_encode_varint(len(k)) + k + b"\x12" + _proto_encode_varint(len(v)) + v
    return _proto_encode_varint((_METADATA_FIELD << 3) | 2) + _proto_encode_varint(len(body)) + body


def _proto_split(buf):
    """(bytes of every field except metadata_props, {key: value}) of a ModelProto."""
    rest = bytearray()
    meta = {}
    seen_graph = False
    for number, wire, start, end, p0, p1 in _proto_fields(buf):
        if number == _METADATA_FIELD and wire == 2:
            key = value = ""
            for n2, w2, _s, _e, q0, q1 in _proto_fields(buf[p0:p1]):
                if n2 in (1, 2) and w2 == 2:
                    text = bytes(buf[p0 + q0:p0 + q1]).decode("utf-8")
                    key, value = (text, value) if n2 == 1 else (key, text)
            meta[key] = value
        else:
            seen_graph |= number == _GRAPH_FIELD and wire == 2
            rest += buf[start:end]
    if not seen_graph:
        raise ValueError("no graph in the file")
    return bytes(rest), meta
