"""The JSON form of a record that the built-in backends store or send.

msgspec's JSON: UUIDs as canonical strings, ``ts`` as RFC 3339 with its offset,
inline attachment ``data`` as base64. Decoding checks every field's type, so a
stored record that no longer matches ``MessageRecord`` fails loudly.
"""

from __future__ import annotations

from typing import Final

import msgspec

from .._records import MessageRecord

__all__ = ["DECODE_ERRORS", "decode_record", "encode_record"]

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(MessageRecord)

encode_record: Final = _encoder.encode
"""``encode_record(record) -> bytes``: one record as a compact JSON object."""

decode_record: Final = _decoder.decode
"""``decode_record(data: bytes | str) -> MessageRecord``: the inverse."""

#: What ``decode_record`` raises for bytes that are not a record: msgspec's
#: ``DecodeError`` (its ``ValidationError`` is one), and ``RecursionError`` for
#: nesting deeper than msgspec decodes.
DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError)
