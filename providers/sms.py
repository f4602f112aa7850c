"""SMS segment arithmetic shared by every SMS provider (GSM 03.38 / 3GPP TS 23.038).

Vendors bill per segment and most refuse a body over a fixed number of segments, so we
count segments before a send: a body that can never fit is a permanent error, caught
here instead of by a vendor round-trip that would cost an attempt (and sometimes money).

Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from herald.errors import PermanentProviderError

Encoding = Literal["GSM-7", "UCS-2"]

#: The GSM 03.38 default alphabet: one septet each (the escape 0x1B itself is excluded).
GSM7_BASIC: Final[frozenset[str]] = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: The extension table: sent as escape + character, so two septets each.
GSM7_EXTENSION: Final[frozenset[str]] = frozenset("\f^{}\\[~]|€")

#: (units in a single-segment message, units per segment of a concatenated message);
#: the difference is the 6-byte user-data header (UDH) that links the parts.
LIMITS: Final[dict[Encoding, tuple[int, int]]] = {"GSM-7": (160, 153), "UCS-2": (70, 67)}

#: A common vendor ceiling: Twilio refuses bodies over 10 segments (1,600 characters).
DEFAULT_MAX_SEGMENTS: Final = 10


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """How a body travels: its encoding, its length in encoding units, its segment count.

    ``characters`` counts encoding units: septets for GSM-7 (an extension character is
    two), UTF-16 code units for UCS-2 (a character outside the BMP, e.g. an emoji, is two).
    """

    encoding: Encoding
    characters: int
    segments: int


def is_gsm7(text: str) -> bool:
    """True when every character exists in the GSM-7 basic set or its extension table."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def _unit_widths(text: str, encoding: Encoding) -> list[int]:
    """Width of each character in encoding units; kept per character so that a
    concatenated message never splits an escape sequence or a surrogate pair."""
    if encoding == "GSM-7":
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def _pack(widths: list[int], capacity: int) -> int:
    """Segments needed when characters are packed greedily, never split across parts."""
    segments, used = 1, 0
    for width in widths:
        if used + width > capacity:
            segments, used = segments + 1, 0
        used += width
    return segments


def segment_info(text: str) -> SegmentInfo:
    """Encoding, length in units and segment count of an SMS body (an empty body is one
    segment: the handset still receives a message)."""
    encoding: Encoding = "GSM-7" if is_gsm7(text) else "UCS-2"
    widths = _unit_widths(text, encoding)
    units = sum(widths)
    single, per_part = LIMITS[encoding]
    segments = 1 if units <= single else _pack(widths, per_part)
    return SegmentInfo(encoding=encoding, characters=units, segments=segments)


def check_sms_body(text: str, max_segments: int) -> SegmentInfo:
    """``segment_info`` of a body, or a permanent error when it needs too many segments:
    no retry or other vendor would send it, so it fails at once (DESIGN §7)."""
    info = segment_info(text)
    if info.segments > max_segments:
        raise PermanentProviderError(
            f"SMS body needs {info.segments} {info.encoding} segments "
            f"({info.characters} units); the limit is {max_segments}",
            code="body_too_long",
        )
    return info
