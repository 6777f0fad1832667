"""RFC 6455 framing rules as seen through the server, with a raw socket
(client libraries refuse to send most of these frames)."""
import pytest

from wsutil import RawWS, close_payload, frame, frame_len64

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def expect_close(ws, code):
    got, _ = ws.recv_close()
    assert got == code
    # After failing the connection the server closes TCP too.
    assert ws.expect_eof()


@pytest.fixture
def srv(ringcast):
    return ringcast("--shards", "2")


def test_fragments_with_pings_in_between(srv):
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(TEXT, b"Hel", fin=False))
        ws.send(frame(PING, b"p1"))
        ws.send(frame(CONT, "lo wörld".encode()[:4], fin=False))
        ws.send(frame(PING, b"p2"))
        ws.send(frame(CONT, "lo wörld".encode()[4:], fin=True))
        # Pings are answered at once, in order, while the message is still open.
        assert ws.recv_frame() == (True, PONG, b"p1")
        assert ws.recv_frame() == (True, PONG, b"p2")
        assert ws.recv_frame() == (True, TEXT, "Hello wörld".encode())

        # A UTF-8 character split across fragments, and binary fragments.
        euro = "€".encode()
        ws.send(frame(TEXT, euro[:1], fin=False))
        ws.send(frame(CONT, euro[1:], fin=True))
        assert ws.recv_frame() == (True, TEXT, euro)
        ws.send(frame(BINARY, b"\x00\x01", fin=False))
        ws.send(frame(CONT, b"", fin=False))
        ws.send(frame(CONT, b"\x02", fin=True))
        assert ws.recv_frame() == (True, BINARY, b"\x00\x01\x02")
    finally:
        ws.close()


def test_many_frames_in_one_write(srv):
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(b"".join(frame(TEXT, f"m{i}".encode()) for i in range(100)))
        for i in range(100):
            assert ws.recv_data() == (TEXT, f"m{i}".encode())
    finally:
        ws.close()


def test_frame_split_byte_by_byte(srv):
    ws = RawWS(srv.port, "/echo")
    try:
        data = frame(BINARY, bytes(range(200)))
        for b in data:
            ws.send(bytes([b]))
        assert ws.recv_data() == (BINARY, bytes(range(200)))
    finally:
        ws.close()


BAD_FRAMES = {
    "rsv1": frame(TEXT, b"x", rsv=4),
    "rsv2": frame(TEXT, b"x", rsv=2),
    "rsv3": frame(TEXT, b"x", rsv=1),
    "opcode-3": frame(0x3, b"x"),
    "opcode-7": frame(0x7, b""),
    "opcode-0xB": frame(0xB, b""),
    "opcode-0xF": frame(0xF, b"x"),
    "ping-over-125": frame(PING, b"p" * 126),
    "close-over-125": frame(CLOSE, close_payload(1000, b"r" * 124)),
    "fragmented-ping": frame(PING, b"p", fin=False),
    "fragmented-close": frame(CLOSE, close_payload(1000), fin=False),
    "unmasked": frame(TEXT, b"hello", mask=False),
    "continuation-without-start": frame(CONT, b"x"),
    "data-inside-fragmented": frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"),
    "binary-inside-fragmented": frame(BINARY, b"a", fin=False) + frame(BINARY, b"b", fin=False),
    "len64-top-bit": frame_len64(BINARY, (1 << 63) | 5),
    "close-1-byte": frame(CLOSE, b"\x03"),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_protocol_errors_close_1002(srv, name):
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(BAD_FRAMES[name])
        expect_close(ws, 1002)
    finally:
        ws.close()


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2999, 5000, 65535])
def test_invalid_close_codes_get_1002(srv, code):
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(CLOSE, close_payload(code, b"bad")))
        expect_close(ws, 1002)
    finally:
        ws.close()


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        b"\xc0\xaf",  # overlong
        b"\xed\xa0\x80",  # surrogate
        b"abc\xe2\x82",  # truncated at the end of the message
        b"\xf4\x90\x80\x80",  # above U+10FFFF
    ],
)
def test_invalid_utf8_closes_1007(srv, payload):
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(TEXT, payload))
        expect_close(ws, 1007)
    finally:
        ws.close()


def test_invalid_utf8_across_fragments_closes_1007(srv):
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(TEXT, b"ok \xe2", fin=False))
        ws.send(frame(CONT, b"\x28\xa1", fin=True))
        expect_close(ws, 1007)
    finally:
        ws.close()


def test_invalid_utf8_in_close_reason(srv):
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(CLOSE, close_payload(1000, b"\xff\xfe")))
        got, _ = ws.recv_close()
        assert got in (1002, 1007)
    finally:
        ws.close()


def test_too_big_single_frame_and_fragments(ringcast):
    srv = ringcast("--max-message-size", "4096")
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(BINARY, b"a" * 4096))
        assert ws.recv_data() == (BINARY, b"a" * 4096)
        # Declared length over the limit: refused from the header alone.
        ws.send(frame(BINARY, b"", length=4097))
        expect_close(ws, 1009)
    finally:
        ws.close()
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(TEXT, b"a" * 3000, fin=False))
        ws.send(frame(CONT, b"a" * 1097, fin=True))
        expect_close(ws, 1009)
    finally:
        ws.close()


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1008, 1011, 1014, 3000, 4999])
def test_close_is_echoed(srv, code):
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(TEXT, b"before"))
        assert ws.recv_data() == (TEXT, b"before")
        ws.send(frame(CLOSE, close_payload(code, b"bye")))
        got, _ = ws.recv_close()
        assert got == code
        assert ws.expect_eof()
    finally:
        ws.close()


def test_empty_close_is_answered(srv):
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(CLOSE, b""))
        got, _ = ws.recv_close()
        assert got in (None, 1000)
        assert ws.expect_eof()
    finally:
        ws.close()


def test_frames_after_close_are_ignored(srv):
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(CLOSE, close_payload(1000)) + frame(TEXT, b"late"))
        got, _ = ws.recv_close()
        assert got == 1000
        assert ws.expect_eof()
    finally:
        ws.close()


def test_server_survives_every_bad_frame(srv):
    # After all of the above on one process, normal traffic still flows.
    for data in BAD_FRAMES.values():
        ws = RawWS(srv.port, "/echo")
        ws.send(data)
        ws.close()
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(TEXT, b"still here"))
        assert ws.recv_data() == (TEXT, b"still here")
    finally:
        ws.close()
