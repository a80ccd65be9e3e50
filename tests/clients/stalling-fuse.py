"""Mounts a FUSE filesystem over a file and never answers it: every
request to it (a stat, a read) waits until this process exits, as with a
FUSE server that hangs. Needs /dev/fuse (root here). Exits after SECS.

usage: stalling-fuse.py FILE SECS
"""

import ctypes
import os
import sys
import time

target, secs = sys.argv[1], float(sys.argv[2])
fuse = os.open("/dev/fuse", os.O_RDWR)
libc = ctypes.CDLL(None, use_errno=True)
# rootmode 0100000: the filesystem's root is a regular file, like the one
# it covers.
options = f"fd={fuse},rootmode=100000,user_id=0,group_id=0".encode()
if libc.mount(b"stall", target.encode(), b"fuse", 0, options) != 0:
    sys.exit("mount: " + os.strerror(ctypes.get_errno()))
time.sleep(secs)
