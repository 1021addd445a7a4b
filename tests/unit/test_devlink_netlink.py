"""The guest-side netlink client's handling of dumps the kernel ends with an error, and the
agent's request lines while it watches."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from guest.programs.devlink_netlink import (
    NLM_F_ACK_TLVS,
    NLMSG_HDRLEN,
    Chunk,
    Lines,
    dump_done_errno,
    dump_done_message,
    encode_chunks,
    error_message,
    region_chunks,
)
from rig.devlink.agent import decode_chunks
from rig.errors import RigError

NLMSG_DONE = 3
NLM_F_MULTI = 2


def done(code: int, seq: int = 7) -> bytes:
    """An NLMSG_DONE as netlink_dump() sends it: header, then the dump's int status."""
    return struct.pack("=IHHIIi", NLMSG_HDRLEN + 4, NLMSG_DONE, NLM_F_MULTI, seq, 0, code)


def test_a_failed_dump_reports_its_errno() -> None:
    assert dump_done_errno(done(-errno.EINVAL)) == errno.EINVAL


def test_a_successful_dump_reports_zero() -> None:
    assert dump_done_errno(done(0)) == 0


def test_the_message_is_found_at_its_offset_in_a_batch() -> None:
    data = b"\xff" * 24 + done(-errno.EPERM)
    assert dump_done_errno(data, 24) == errno.EPERM


def test_a_done_without_payload_is_success() -> None:
    bare = struct.pack("=IHHII", NLMSG_HDRLEN, NLMSG_DONE, NLM_F_MULTI, 1, 0)
    assert dump_done_errno(bare) == 0


def done_with_message(code: int, text: bytes) -> bytes:
    """An NLMSG_DONE with the extended ack netlink_dump_done() adds: NLMSGERR_ATTR_MSG."""
    attr = struct.pack("=HH", 4 + len(text) + 1, 1) + text + b"\0"
    attr += bytes(-len(attr) % 4)
    return (
        struct.pack(
            "=IHHIIi",
            NLMSG_HDRLEN + 4 + len(attr),
            NLMSG_DONE,
            NLM_F_MULTI | NLM_F_ACK_TLVS,
            7,
            0,
            code,
        )
        + attr
    )


def test_a_failed_dump_reports_the_kernels_words() -> None:
    data = b"\xff" * 8 + done_with_message(-errno.EINVAL, b"Requested snapshot does not exist")
    assert dump_done_errno(data, 8) == errno.EINVAL
    assert dump_done_message(data, 8) == "Requested snapshot does not exist"


def test_a_done_without_tlvs_has_no_message() -> None:
    assert dump_done_message(done(-errno.EINVAL)) is None


def nla(kind: int, payload: bytes) -> bytes:
    attr = struct.pack("=HH", 4 + len(payload), kind) + payload
    return attr + bytes(-len(attr) % 4)


NESTED = 0x8000  # NLA_F_NESTED, as nla_nest_start() sets it


def read_reply(*chunks: tuple[int, bytes]) -> bytes:
    """A REGION_READ reply's attributes as devlink_nl_cmd_region_read_chunk_fill() puts
    them: the handle, then CHUNKS { CHUNK { DATA, ADDR } ... }."""
    inner = b"".join(
        nla(94 | NESTED, nla(95, data) + nla(96, struct.pack("=Q", addr))) for addr, data in chunks
    )
    return nla(1, b"pci\0") + nla(2, b"0000:01:00.0\0") + nla(93 | NESTED, inner)


def test_a_read_reply_gives_its_chunks_in_order() -> None:
    body = read_reply((0x100, bytes(range(7))), (0x107, b"\xaa" * 256))
    data = b"\xee" * 20 + body  # the netlink and genetlink headers
    assert region_chunks(data, 20, len(data)) == [
        Chunk(0x100, bytes(range(7))),
        Chunk(0x107, b"\xaa" * 256),
    ]


def test_a_read_reply_crosses_to_the_host_chunk_for_chunk() -> None:
    chunks = [Chunk(0x100, bytes(range(7))), Chunk(0x107, b""), Chunk(0x2000, os.urandom(256))]
    reply = encode_chunks(chunks)
    assert decode_chunks(reply) == [(c.addr, c.data) for c in chunks]
    # The sizes must account for every byte.
    with pytest.raises(RigError, match="7 bytes for 3 addresses and 3 sizes summing to 264"):
        decode_chunks(encode_chunks(chunks[:2]) | {"sizes": [7, 0, 257], "addrs": [1, 2, 3]})
    with pytest.raises(RigError, match="does not decode"):
        decode_chunks({"addrs": [], "sizes": [], "deflated": "not base64!"})


def test_a_chunk_without_its_address_is_an_error() -> None:
    body = nla(93 | NESTED, nla(94 | NESTED, nla(95, b"\x01\x02\x03\x04")))
    with pytest.raises(LookupError, match="without its address"):
        region_chunks(body, 0, len(body))


def test_an_attribute_overrunning_its_message_is_an_error() -> None:
    body = read_reply((0, b"\x00" * 16))
    with pytest.raises(LookupError, match="overruns"):
        region_chunks(body, 0, len(body) - 8)


NLMSG_ERROR = 2
NLM_F_CAPPED = 0x100


@pytest.mark.parametrize("capped", [False, True])
def test_an_error_reports_the_kernels_words_after_the_echoed_request(capped: bool) -> None:
    request = struct.pack("=IHHII", NLMSG_HDRLEN + 8, 20, 0x301, 1, 0) + b"\x2e\x01\0\0zzzz"
    echoed = request[:NLMSG_HDRLEN] if capped else request
    tlv = nla(1, b"Requested region does not exist\0")
    flags = NLM_F_ACK_TLVS | (NLM_F_CAPPED if capped else 0)
    body = struct.pack("=i", -errno.EINVAL) + echoed + tlv
    msg = struct.pack("=IHHII", NLMSG_HDRLEN + len(body), NLMSG_ERROR, flags, 1, 0) + body
    assert error_message(msg) == "Requested region does not exist"


def test_a_watch_sees_the_hosts_line_or_its_hang_up_and_nothing_else() -> None:
    """Lines.wait_readable: True only for a whole line (the watch's end) or the end of input;
    a notification on the socket alone is False. A line already read into the buffer counts,
    which select() on the descriptor alone would miss."""
    r, w = os.pipe()
    sock, peer = socket.socketpair()
    lines = Lines(r)
    try:
        os.write(w, b'{"op": "x"}\n{"op"')
        assert lines.readline() == '{"op": "x"}'
        peer.send(b"n")  # a notification: the socket is readable, no line has come
        assert lines.wait_readable(sock) is False
        sock.recv(1)
        os.write(w, b': "unwatch"}\n{"op": "y"}\n')
        assert lines.wait_readable(sock) is True
        assert lines.readline() == '{"op": "unwatch"}'
        assert lines.wait_readable(sock) is True  # buffered: select() would block here
        assert lines.readline() == '{"op": "y"}'
        os.close(w)
        w = -1
        assert lines.wait_readable(sock) is True  # the host hung up
        assert lines.readline() is None
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        sock.close()
        peer.close()


def test_the_agent_skips_pyroute2s_package_init() -> None:
    """Run as a program, the agent imports pyroute2's netlink modules only: the package's
    __init__ would import IPRoute, NDB and the rest, seconds of guest CPU under TCG."""
    script = Path(__file__).parents[2] / "guest" / "programs" / "devlink_netlink.py"
    probe = (
        "import runpy, sys; sys.argv = ['devlink_netlink.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('pyroute2'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    loaded = out.splitlines()[-1].split()
    assert "pyroute2.netlink.generic" in loaded
    assert not [m for m in loaded if m.startswith(("pyroute2.iproute", "pyroute2.ndb"))], loaded
