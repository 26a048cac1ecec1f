"""Markers, instance names and TXT records (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from handoffd.discovery import txt

KEY = b"\x01" * 32
A, B = "A" * 32, "B" * 32
DAY = 20_000
NOW = DAY * 86400 + 10


def _ours(device: str, day: int, key: bytes = KEY) -> txt.Txt:
    return txt.Txt("1", txt.device_marker(key, device, day), txt.account_marker(key, day))


def test_markers_rotate_daily_and_need_the_key() -> None:
    assert txt.device_marker(KEY, A, DAY) != txt.device_marker(KEY, A, DAY + 1)
    assert txt.device_marker(KEY, A, DAY) != txt.device_marker(b"\x02" * 32, A, DAY)
    assert txt.device_marker(KEY, A, DAY) != txt.device_marker(KEY, B, DAY)
    assert txt.account_marker(KEY, DAY) != txt.account_marker(KEY, DAY + 1)
    assert txt.account_marker(KEY, DAY) != txt.account_marker(b"\x02" * 32, DAY)
    # Nothing stable of the device or the account is visible.
    assert A.lower() not in txt.device_marker(KEY, A, DAY)
    assert len(txt.device_marker(KEY, A, DAY)) == txt.DEVICE_MARKER_LEN


def test_marker_book_maps_three_days_of_known_devices() -> None:
    book = txt.MarkerBook(KEY)
    book.update({A, B}, NOW)
    for day in (DAY - 1, DAY, DAY + 1):
        assert book.is_ours(_ours(B, day))
        assert book.device_for(_ours(B, day)) == B
        assert book.device_for_marker(txt.device_marker(KEY, A, day)) == A
    for day in (DAY - 2, DAY + 2):
        assert not book.is_ours(_ours(B, day))
        assert book.device_for(_ours(B, day)) is None
    stranger = _ours(B, DAY, key=b"\x09" * 32)
    assert not book.is_ours(stranger)
    assert book.device_for(stranger) is None
    book.update({A}, NOW)  # B unpaired: no longer recognised
    assert book.device_for(_ours(B, DAY)) is None
    book.update({A}, NOW + 86400)  # the day moves on
    assert book.device_for(_ours(A, DAY + 2)) == A
    assert book.device_for(_ours(A, DAY - 1)) is None


def test_instance_names() -> None:
    marker = txt.device_marker(KEY, A, DAY)
    name = txt.instance_name(marker)
    assert name == f"{marker}._handoff._tcp.local."
    assert txt.marker_of(name) == marker
    assert txt.marker_of(name.upper()) == marker  # DNS names are case-insensitive
    assert txt.host_name(marker) == f"{marker}.local."
    for bad in (
        f"{marker}._other._tcp.local.",
        f"{marker[:-1]}._handoff._tcp.local.",
        f"{marker}x._handoff._tcp.local.",
        "z" * 20 + "._handoff._tcp.local.",
        f"a.{marker}._handoff._tcp.local.",
        "",
        marker,
    ):
        assert txt.marker_of(bad) is None, bad


def test_txt_roundtrip_and_strictness() -> None:
    record = txt.Txt("1", "a" * 20, "b" * 16)
    props = {k.encode(): v.encode() for k, v in record.encode().items()}
    assert txt.decode_txt(props) == record
    assert txt.decode_txt({**props, b"v": b"2"}) is None  # another version
    assert txt.decode_txt({**props, b"d": b"Z" * 20}) is None  # not hex
    assert txt.decode_txt({**props, b"d": b"A" * 20}) is None  # upper-case hex is not canonical
    assert txt.decode_txt({**props, b"a": b"b" * 15}) is None  # too short
    assert txt.decode_txt({**props, b"a": b"b" * 17}) is None  # too long
    assert txt.decode_txt({**props, b"d": b"\xff" * 20}) is None  # not ASCII
    assert txt.decode_txt({**props, b"d": b"a" * 65}) is None  # oversized value: missing
    assert txt.decode_txt({**props, b"extra": b"ok"}) == record  # unknown keys ignored
    assert txt.decode_txt({**props, b"x" * 17: b"ok"}) == record  # oversized unknown key
    assert txt.decode_txt(dict.fromkeys(props)) is None  # keys without values
    too_many = {**props, **{f"k{i}".encode(): b"1" for i in range(txt.MAX_TXT_KEYS)}}
    assert txt.decode_txt(too_many) is None


def _raw(*entries: bytes) -> bytes:
    return b"".join(bytes([len(e)]) + e for e in entries)


def test_parse_txt_record_follows_rfc6763() -> None:
    raw = _raw(
        b"v=1", b"D=" + b"a" * 20, b"d=ignored", b"", b"flag", b"=novalue", b"a=" + b"b" * 16
    )
    props = txt.parse_txt_record(raw)
    assert props == {b"v": b"1", b"d": b"a" * 20, b"flag": None, b"a": b"b" * 16}
    assert props is not None
    assert txt.decode_txt(props) == txt.Txt("1", "a" * 20, "b" * 16)
    assert txt.parse_txt_record(b"") == {}
    assert txt.parse_txt_record(b"\x05ab") is None  # length runs past the end
    assert txt.parse_txt_record(b"\x00" * (txt.MAX_TXT_BYTES + 1)) is None
    many = txt.parse_txt_record(_raw(*(f"k{i}=1".encode() for i in range(40))))
    assert many is not None
    assert len(many) == txt.MAX_TXT_KEYS


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.binary(max_size=20), st.none() | st.binary(max_size=80), max_size=20))
def test_txt_decoder_never_raises(props: dict[bytes, bytes | None]) -> None:
    out = txt.decode_txt(props)
    assert out is None or isinstance(out, txt.Txt)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1500))
def test_txt_record_parser_never_raises(raw: bytes) -> None:
    props = txt.parse_txt_record(raw)
    if props is not None:
        assert len(props) <= txt.MAX_TXT_KEYS
        out = txt.decode_txt(props)
        assert out is None or isinstance(out, txt.Txt)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_marker_of_never_raises(name: str) -> None:
    marker = txt.marker_of(name)
    assert marker is None or len(marker) == txt.DEVICE_MARKER_LEN
