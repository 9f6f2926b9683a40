"""Community ID v1 flow hashes (corelight's spec), for correlating with Zeek, Suricata and Elastic."""

from __future__ import annotations

import base64
import functools
import hashlib
import socket
import struct


def community_id(src_ip: str, src_port: int, dst_ip: str, dst_port: int, proto: int, seed: int = 0) -> str:
    """`1:<base64 sha1>` of the flow, ordered so both directions give the same id."""
    src, dst = _packed(src_ip), _packed(dst_ip)
    if (src, src_port) > (dst, dst_port):
        src, dst, src_port, dst_port = dst, src, dst_port, src_port
    data = struct.pack("!H", seed) + src + dst + struct.pack("!BxHH", proto, src_port, dst_port)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


@functools.lru_cache(maxsize=4096)
def _packed(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
