"""glibc's getaddrinfo, through Python, from several threads at once, as a
threaded server looks a name up. Usage: getaddrinfo-threads.py NAME
THREADS STAGGER_MS; thread k starts k * STAGGER_MS after the first and
looks NAME up once. Prints every lookup's addresses, one a line, and exits
1 if any lookup failed."""
import socket
import sys
import threading
import time

name, threads, stagger = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000
lock = threading.Lock()
addresses = []
failures = []


def look_up():
    try:
        results = socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as error:
        with lock:
            failures.append(f"getaddrinfo {name}: {error}")
        return
    with lock:
        addresses.extend(result[4][0] for result in results)


workers = []
for k in range(threads):
    if k:
        time.sleep(stagger)
    worker = threading.Thread(target=look_up)
    worker.start()
    workers.append(worker)
for worker in workers:
    worker.join()
for address in addresses:
    print(address)
for failure in failures:
    print(failure, file=sys.stderr)
sys.exit(1 if failures else 0)
