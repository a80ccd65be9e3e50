"""glibc's getaddrinfo, through Python: the A and AAAA queries go out in one
sendmmsg. Usage: getaddrinfo.py NAME [LOOKUPS]; prints the last lookup's
addresses, one a line."""
import socket
import sys

name = sys.argv[1]
lookups = int(sys.argv[2]) if len(sys.argv) > 2 else 1
for _ in range(lookups):
    results = socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
for result in results:
    print(result[4][0])
