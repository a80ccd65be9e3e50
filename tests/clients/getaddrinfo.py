"""glibc's getaddrinfo, through Python: the A and AAAA queries go out in one
sendmmsg. Usage: getaddrinfo.py NAME [LOOKUPS]; looks NAME up LOOKUPS times
whatever each gives, prints the last lookup's addresses, one a line, and
exits 1 if the last lookup failed."""
import socket
import sys

name = sys.argv[1]
lookups = int(sys.argv[2]) if len(sys.argv) > 2 else 1
results = []
for _ in range(lookups):
    try:
        results = socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as error:
        print(f"getaddrinfo {name}: {error}", file=sys.stderr)
        results = None
if results is None:
    sys.exit(1)
for result in results:
    print(result[4][0])
