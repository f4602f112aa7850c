"""SMS segment counting: fixed cases at the boundaries, then properties over any text."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.errors import PermanentProviderError
from providers.base import retry_after_seconds
from providers.sms import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    SegmentInfo,
    check_sms_body,
    segment_info,
)

GSM_CHARS = sorted(GSM7_BASIC | GSM7_EXTENSION)
gsm_text = st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=700)
any_text = st.text(max_size=700)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SegmentInfo("GSM-7", 0, 1)),
        ("Your code is 123456", SegmentInfo("GSM-7", 19, 1)),
        ("a" * 160, SegmentInfo("GSM-7", 160, 1)),
        ("a" * 161, SegmentInfo("GSM-7", 161, 2)),
        ("a" * 306, SegmentInfo("GSM-7", 306, 2)),
        ("a" * 307, SegmentInfo("GSM-7", 307, 3)),
        ("€" * 80, SegmentInfo("GSM-7", 160, 1)),
        ("€" * 81, SegmentInfo("GSM-7", 162, 2)),  # 76 escapes fit a 153-septet part
        ("a" * 152 + "€", SegmentInfo("GSM-7", 154, 1)),
        ("a" * 159 + "€", SegmentInfo("GSM-7", 161, 2)),
        ("ж" * 70, SegmentInfo("UCS-2", 70, 1)),
        ("ж" * 71, SegmentInfo("UCS-2", 71, 2)),
        ("ж" * 134, SegmentInfo("UCS-2", 134, 2)),
        ("ж" * 135, SegmentInfo("UCS-2", 135, 3)),
        ("hi 👋", SegmentInfo("UCS-2", 5, 1)),
        ("ç", SegmentInfo("UCS-2", 1, 1)),  # lower-case ç is not in GSM-7 (only Ç is)
    ],
)
def test_fixed_cases(text: str, expected: SegmentInfo) -> None:
    assert segment_info(text) == expected


def test_escape_sequence_never_split_across_parts() -> None:
    # 152 septets, then a 2-septet "€" that would straddle the 153-septet boundary.
    assert segment_info("a" * 152 + "€" + "a" * 10).segments == 2
    assert segment_info("a" * 152 + "€" + "a" * 152).segments == 3


def test_check_sms_body_refuses_over_the_limit() -> None:
    assert check_sms_body("a" * 1530, max_segments=10).segments == 10
    with pytest.raises(PermanentProviderError) as caught:
        check_sms_body("a" * 1531, max_segments=10)
    assert caught.value.code == "body_too_long"


@given(any_text, st.text(max_size=50))
def test_segments_monotonic_in_length(text: str, more: str) -> None:
    assert segment_info(text + more).segments >= segment_info(text).segments


@given(gsm_text)
def test_gsm_only_text_is_never_ucs2(text: str) -> None:
    assert segment_info(text).encoding == "GSM-7"


@given(gsm_text, st.sampled_from(["😀", "🚀", "👍🏽", "🇮🇳"]), st.integers(0, 700))
def test_one_emoji_makes_it_ucs2(text: str, emoji: str, at: int) -> None:
    at = min(at, len(text))
    info = segment_info(text[:at] + emoji + text[at:])
    assert info.encoding == "UCS-2"
    assert info.characters >= len(text) + 2  # outside the BMP: a surrogate pair


@given(any_text)
def test_segments_fit_their_units(text: str) -> None:
    info = segment_info(text)
    single, per_part = (160, 153) if info.encoding == "GSM-7" else (70, 67)
    if info.characters <= single:
        assert info.segments == 1
    else:
        assert info.segments >= -(-info.characters // per_part)
        assert info.segments <= -(-info.characters // (per_part - 1))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 30 ", 30.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: go now
        ("soon", None),
    ],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    assert retry_after_seconds(header, now=now) == expected
