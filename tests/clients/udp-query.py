"""One A query over UDP, then either reads the response or only waits until
it has arrived (select) and exits with it unread in the socket.
Usage: udp-query.py SERVER PORT NAME read|leave; prints "arrived"."""
import select
import socket
import struct
import sys

server, port, name, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
question = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split("."))
query = struct.pack(">HHHHHH", 0x5151, 0x0100, 1, 0, 0, 0) + question + b"\0" + struct.pack(">HH", 1, 1)
family = socket.AF_INET6 if ":" in server else socket.AF_INET
with socket.socket(family, socket.SOCK_DGRAM) as sock:
    sock.connect((server, port))
    sock.send(query)
    readable, _, _ = select.select([sock], [], [], 5)
    if not readable:
        sys.exit("no response within 5 s")
    if mode == "read":
        sock.recv(4096)
    print("arrived")
