"""MessageReader: the byte stream from QEMU cut into messages, descriptors kept with theirs."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from vfio_user import protocol as p
from vfio_user.framing import RX_SIZE, Disconnected, Message, MessageReader

MAX = 4096
DRAIN = 1 << 20


def msg(msg_id: int, body: bytes = b"", size: int | None = None) -> bytes:
    size = p.HEADER_SIZE + len(body) if size is None else size
    return p.HEADER.pack(msg_id, p.Command.REGION_WRITE, size, 0, 0) + body


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, MessageReader]]:
    a, b = socket.socketpair()
    reader = MessageReader(b, MAX, DRAIN)
    yield a, reader
    reader.close()
    a.close()
    b.close()


def ids(messages: list[Message]) -> list[int]:
    return [h[0] for h, _, _ in messages]


def test_one_message_per_read(pair: tuple[socket.socket, MessageReader]) -> None:
    a, reader = pair
    a.sendall(msg(1, b"abcd"))
    [(header, body, fds)] = reader.read()
    assert header[0] == 1 and header[2] == 20 and body == b"abcd" and fds == []


def test_several_messages_in_one_read(pair: tuple[socket.socket, MessageReader]) -> None:
    a, reader = pair
    a.sendall(msg(1, b"x" * 8) + msg(2) + msg(3, b"yz"))
    got = reader.read()
    assert ids(got) == [1, 2, 3]
    assert [b for _, b, _ in got] == [b"x" * 8, b"", b"yz"]


def test_a_message_split_across_reads(pair: tuple[socket.socket, MessageReader]) -> None:
    a, reader = pair
    whole = msg(1, b"0123456789") + msg(2, b"ab")
    a.sendall(whole[:7])  # not even a whole header
    assert reader.read() == []
    a.sendall(whole[7:20])
    assert reader.read() == []
    a.sendall(whole[20:])
    got = reader.read()
    assert ids(got) == [1, 2] and got[0][1] == b"0123456789"


def test_descriptors_go_with_their_message(pair: tuple[socket.socket, MessageReader]) -> None:
    a, reader = pair
    r, w = os.pipe()
    try:
        a.sendall(msg(1, b"plain"))
        a.sendmsg([msg(2, b"with fd")], [p.fds_ancillary([w])])
        a.sendall(msg(3, b"after"))
        got = reader.read()
        while len(got) < 3:  # Linux ends a read after the descriptors' data
            got += reader.read()
        assert ids(got) == [1, 2, 3]
        assert got[0][2] == [] and got[2][2] == []
        [fd] = got[1][2]
        os.write(fd, b"!")  # the same pipe, under a new number
        assert os.read(r, 1) == b"!"
        os.close(fd)
    finally:
        os.close(r)
        os.close(w)


def test_oversized_message_is_drained_then_refused(
    pair: tuple[socket.socket, MessageReader],
) -> None:
    a, reader = pair
    big = MAX + 3 * RX_SIZE // 2  # takes more than one read to drain
    a.sendall(msg(7, bytes(big - p.HEADER_SIZE)) + msg(8, b"next"))
    got: list[Message] = []
    while len(got) < 2:
        got += reader.read()
    assert ids(got) == [7, 8]
    assert got[0][1] is None and got[0][0][2] == big  # refused, not delivered
    assert got[1][1] == b"next"  # and the stream is still in step


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (msg(1, size=8), "malformed header: size 8"),
        (msg(1, size=DRAIN + 1), "absurd"),
    ],
)
def test_unrecoverable_headers_hang_up(
    pair: tuple[socket.socket, MessageReader], data: bytes, error: str
) -> None:
    a, reader = pair
    a.sendall(msg(0) + data)  # behind a good message: the slow path
    with pytest.raises(Disconnected, match=error):
        reader.read()


def test_eof_mid_message_and_clean_eof(pair: tuple[socket.socket, MessageReader]) -> None:
    a, reader = pair
    a.sendall(msg(1, b"abcdef")[:10])
    assert reader.read() == []
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(Disconnected, match="closed mid-message"):
        reader.read()

    c, d = socket.socketpair()
    c.close()
    with pytest.raises(Disconnected) as e:
        MessageReader(d, MAX, DRAIN).read()
    assert str(e.value) == ""  # a clean end: nothing to report
    d.close()
