"""Sends COUNT A queries for NAME from one connected UDP socket, reading
each answer, and renames its thread to NEW after the first.
Usage: rename.py SERVER PORT NAME COUNT NEW; prints its pid."""
import socket
import struct
import sys

server, port, name, count, new = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
question = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split("."))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.connect((server, port))
    sock.settimeout(5)
    for n in range(count):
        query = struct.pack(">HHHHHH", n, 0x0100, 1, 0, 0, 0) + question + b"\0" + struct.pack(">HH", 1, 1)
        sock.send(query)
        sock.recv(4096)
        if n == 0:
            with open("/proc/self/comm", "w") as comm:
                comm.write(new)
print(__import__("os").getpid())
