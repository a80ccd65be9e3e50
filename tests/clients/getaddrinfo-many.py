"""glibc's getaddrinfo, through Python, for many names, some of which fail.

Usage: getaddrinfo-many.py PROCESSES PER_SECOND ROUNDS NAME...

Looks up r<round>.<name> for each round and name. The rounds are shared out
among PROCESSES forked processes, each looking up at most PER_SECOND names a
second. Prints one line per lookup: the name asked, then "ok" or the
gaierror code."""
import ctypes
import multiprocessing
import signal
import socket
import sys
import time

PR_SET_PDEATHSIG = 1


def die_with_parent():
    # A worker must not outlive a parent killed at the test's time limit.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def look_up(rounds, per_second, names):
    results = []
    start = time.monotonic()
    for round_ in rounds:
        for name in names:
            # Paced against the start, so a slow lookup does not slow the rest.
            due = start + len(results) / per_second
            time.sleep(max(0.0, due - time.monotonic()))
            asked = f"r{round_}.{name}"
            try:
                socket.getaddrinfo(asked, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
                results.append(f"{asked} ok")
            except socket.gaierror as error:
                results.append(f"{asked} {error.errno}")
    return results


def main():
    processes, per_second, rounds = (int(arg) for arg in sys.argv[1:4])
    names = sys.argv[4:]
    shares = [(range(p, rounds, processes), per_second, names) for p in range(processes)]
    context = multiprocessing.get_context("fork")
    with context.Pool(processes, initializer=die_with_parent) as pool:
        for results in pool.starmap(look_up, shares):
            print("\n".join(results))


if __name__ == "__main__":
    main()
