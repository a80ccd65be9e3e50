#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/TARGET/): the shapes the
unit tests use as fixtures (analyze/packets.rs, analyze/dnstap.rs,
analyze/jsonl.rs, framing.rs, decode.rs), laid out as each target reads its
input (docs/fuzzing.md). Run it again after changing a target's layout."""
import json, os, struct, sys

here = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    os.makedirs(os.path.join(here, target), exist_ok=True)
    with open(os.path.join(here, target, name), "wb") as f:
        f.write(data)


def name(text):
    out = b""
    for label in text.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def dns(id_, response, qname="a.", qtype=1, answers=0, rcode=0, edns=False, tc=False):
    flags = (0x8180 if response else 0x0100) | rcode | (0x0200 if tc else 0)
    msg = struct.pack(">HHHHHH", id_, flags, 1, answers, 0, 1 if edns else 0)
    msg += name(qname) + struct.pack(">HH", qtype, 1)
    for _ in range(answers):
        if qtype == 28:
            msg += b"\xc0\x0c" + struct.pack(">HHIH", 28, 1, 60, 16) + bytes(15) + b"\1"
        else:
            msg += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    if edns:
        msg += b"\0" + struct.pack(">HHIH", 41, 1232, 0, 0)
    return msg


QUERY = dns(7, False)
ANSWER = dns(7, True, answers=1)
EXAMPLE_QUERY = dns(0x1234, False, "example.test.")
AAAA_ANSWER = dns(0x1234, True, "a.", 28, answers=1)
SERVFAIL = dns(9, True, "b.example.", rcode=2, edns=True)
TRUNCATED = dns(10, True, "big.example.", tc=True)

# decode: two bytes of wire length beyond the capture, then the message.
for i, msg in enumerate([QUERY, ANSWER, EXAMPLE_QUERY, AAAA_ANSWER, SERVFAIL, TRUNCATED]):
    write("decode", f"message-{i}", b"\0\0" + msg)
write("decode", "cut-short", struct.pack(">H", 40) + ANSWER[:20])
write("decode", "header-only", b"\0\0" + struct.pack(">HHHHHH", 1, 0x8185, 0, 0, 0, 0))

# framing: segments of (socket|direction<<3, segment length, captured, bytes).
def segment(socket, sending, length, data):
    return bytes([socket | (8 if sending else 0)]) + struct.pack(">H", length) + bytes([len(data)]) + data

def prefixed(msg):
    return struct.pack(">H", len(msg)) + msg

write("framing", "one-message", segment(1, True, len(QUERY) + 2, prefixed(QUERY)))
write("framing", "two-in-one-segment",
      segment(3, True, 2 * len(QUERY) + 4, prefixed(QUERY) + prefixed(QUERY)))
write("framing", "split-3000",
      segment(7, False, 1448, b"\x0b\xb8\1\2\3") + segment(7, False, 1448, bytes(8))
      + segment(7, False, 106, bytes(8)) + segment(7, False, 3, b"\0\1\x2a"))
write("framing", "continued-then-next",
      segment(4, False, 4, b"\0\5\1\2") + segment(4, False, 6, b"\3\4\5\0\1\x2a"))

# pcap: as packets.rs's tests build them (Ethernet with a VLAN tag, IPv4, UDP).
def ipv4(src, dst, sport, dport, payload, proto=17, tcp_flags=0x18, seq=1):
    if proto == 17:
        l4 = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    else:
        l4 = struct.pack(">HHIIBBHHH", sport, dport, seq, 0, 5 << 4, tcp_flags, 65535, 0, 0) + payload
    hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, bytes(src), bytes(dst))
    return hdr + l4

def ipv6(src, dst, sport, dport, payload):
    l4 = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack(">IHBB", 6 << 28, len(l4), 17, 64) + bytes(src) + bytes(dst) + l4

def ethernet(ip, ethertype=0x0800):
    return bytes(12) + b"\x81\x00\x00\x07" + struct.pack(">H", ethertype) + ip

def sll(ip):
    return struct.pack(">HHH", 0, 772, 0) + bytes(8) + struct.pack(">H", 0x0800) + ip

def pcap(link_type, frames, big_endian=False):
    e = ">" if big_endian else "<"
    out = struct.pack(e + "IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 65535, link_type)
    for i, frame in enumerate(frames):
        out += struct.pack(e + "IIII", 1_795_758_586, i * 1000, len(frame), len(frame)) + frame
    return out

C4, S4 = [10, 0, 0, 2], [10, 0, 0, 1]
C6, S6 = [0xfd] + [0] * 14 + [2], [0xfd] + [0] * 14 + [1]
exchange = [ethernet(ipv4(C4, S4, 40000, 53, QUERY)), ethernet(ipv4(S4, C4, 53, 40000, ANSWER))]
tcp = [ethernet(ipv4(C4, S4, 40001, 53, prefixed(EXAMPLE_QUERY), proto=6)),
       ethernet(ipv4(S4, C4, 53, 40001, prefixed(AAAA_ANSWER), proto=6))]
write("pcap", "udp-exchange", pcap(1, exchange))
write("pcap", "tcp-exchange-big-endian", pcap(1, tcp, big_endian=True))
write("pcap", "linux-cooked", pcap(113, [sll(ipv4(C4, S4, 40000, 53, QUERY))]))
write("pcap", "raw-ipv6", pcap(101, [ipv6(C6, S6, 40000, 53, QUERY), ipv6(S6, C6, 53, 40000, SERVFAIL)]))

# pcapng: as dnstrace writes it, with the process in each packet's comment.
def block(kind, body):
    body += bytes(-len(body) % 4)
    return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

def option(code, value):
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)

def pcapng(link_type, packets):
    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + option(0, b""))
    out += block(1, struct.pack("<HHI", link_type, 0, 0) + option(9, b"\x09") + option(0, b""))
    for i, (frame, comment) in enumerate(packets):
        ts = 1_795_758_586_123_456_789 + i * 1000
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame))
        body += frame + bytes(-len(frame) % 4) + option(1, comment.encode()) + option(0, b"")
        out += block(6, body)
    return out

identity = "pid=4242 tid=4243 comm=Web\\x20Content uid=1000 cgroup_id=5 netns=4026531840 socket_cookie=77 direction={}"
write("pcapng", "own-with-processes", pcapng(101, [
    (ipv4(C4, S4, 40000, 53, QUERY), identity.format("send")),
    (ipv4(S4, C4, 53, 40000, ANSWER), identity.format("recv"))]))
write("pcapng", "ethernet-tcp", pcapng(1, [(f, "") for f in tcp]))

# dnstap: Frame Streams START, data frames, STOP, as analyze/dnstap.rs's tests.
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def field(tag, value):
    if isinstance(value, int):
        return varint(tag << 3) + varint(value)
    return varint(tag << 3 | 2) + varint(len(value)) + value

def fixed32(tag, value):
    return varint(tag << 3 | 5) + struct.pack("<I", value)

def dnstap_record(mtype, query=None, response=None, extra=None, family=1, client=C4, server=S4):
    m = field(1, mtype) + field(2, family) + field(3, 1)
    m += field(4, bytes(client)) + field(5, bytes(server)) + field(6, 40000) + field(7, 53)
    if query is not None:
        m += field(8, 1_700_000_000) + fixed32(9, 5) + field(10, query)
    if response is not None:
        m += field(12, 1_700_000_000) + fixed32(13, 900) + field(14, response)
    d = field(1, b"ns1") + field(2, b"BIND 9")
    if extra is not None:
        d += field(3, extra.encode())
    return d + field(14, m) + field(15, 1)

CONTENT = b"protobuf:dnstap.Dnstap"
def control(kind, content=True):
    body = struct.pack(">I", kind) + (struct.pack(">II", 1, len(CONTENT)) + CONTENT if content else b"")
    return struct.pack(">II", 0, len(body)) + body

def data(payload):
    return struct.pack(">I", len(payload)) + payload

write("dnstap", "server-query", control(2) + data(dnstap_record(1, query=EXAMPLE_QUERY)) + control(3, False))
write("dnstap", "own-stub-records", control(2)
      + data(dnstap_record(9, query=QUERY, extra=identity.format("send")))
      + data(dnstap_record(10, query=QUERY, response=ANSWER, extra=identity.format("recv")))
      + control(3, False))
write("dnstap", "resolver-ipv6", control(2)
      + data(dnstap_record(4, query=QUERY, response=SERVFAIL, family=2, client=C6, server=S6)))

# JSON Lines: message lines as output/json.rs writes them, and other kinds.
def line(direction, msg_id, qr, rcode=None, answers=None, pod=True):
    record = {"kind": "message", "ts": "2026-11-27T05:54:42.897299219Z", "pid": 42, "tid": 43,
              "comm": "Web Content", "uid": 1000, "cgroup_id": 7, "netns": 4026531840,
              "container": {"id": "ef" * 32, "runtime": "containerd", "name": "app", "image": "web:1"} if pod else None,
              "pod": {"name": "web-0", "namespace": "shop", "uid": None} if pod else None,
              "socket_cookie": 99, "direction": direction, "proto": "udp",
              "local": "10.0.0.2:40000", "remote": "10.0.0.1:53", "id": msg_id, "qr": qr,
              "opcode": "QUERY", "flags": ["rd", "ra"] if qr else ["rd"], "rcode": rcode,
              "qname": "a.", "qtype": "AAAA", "answers": answers, "authority": 0 if qr else None,
              "additional": 0 if qr else None, "edns_udp_size": None, "size": 47,
              "truncated_capture": False, "decode_error": None}
    return json.dumps(record, separators=(",", ":"))

write("json_lines", "exchange", "\n".join([
    line("send", 4660, False), line("recv", 4660, True, "NOERROR", 1),
    '{"kind":"lookup","pid":42}', '{"kind":"summary"}', ""]).encode())
write("json_lines", "no-pod-cut-last-line", (line("send", 1, False, pod=False) + "\n"
      + line("recv", 1, True, "SERVFAIL", 0, pod=False)[:60]).encode())

# correlate: a mode byte, then 9 bytes a message (dnstrace/src/fuzz.rs).
def op(dt, who, server_name_answers, msg_id, flags, edns=0, kept=255):
    return bytes([dt, who, server_name_answers]) + struct.pack(">HH", msg_id, flags) + bytes([edns, kept])

glibc_send, glibc_recv = 1, 1 | 8
lookup = op(0, glibc_send, 0, 7, 0x0100) + op(2, glibc_recv, 1 << 4, 7, 0x8180)
write("correlate", "answered", b"\0" + lookup + op(0, 7, 20, 0, 0))
write("correlate", "rejected-then-asked-again", b"\0"
      + op(0, 2, 0, 8, 0x0100) + op(1, 2 | 8, 0, 8, 0x8180) + op(1, 2, 1, 9, 0x0100)
      + op(3, 2 | 8, 1 | 1 << 4, 9, 0x8180, edns=4))
write("correlate", "timeout-and-servfail", b"\0"
      + op(0, 3, 2, 1, 0x0100) + op(250, 7, 100, 0, 0) + op(0, 3, 2, 2, 0x0100) + op(5, 3 | 8, 2, 2, 0x8182))
write("correlate", "file-by-address", b"\1" + op(0, 4, 0, 5, 0x0100) + op(1, 4 | 8, 1 << 4, 5, 0x8180)
      + op(0, 4 | 16, 0, 6, 0x0100) + op(1, 4 | 16 | 8, 1 << 4, 6, 0x8380, kept=20))
print("seeds written", file=sys.stderr)
