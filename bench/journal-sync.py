#!/usr/bin/env python3
"""The filesystem steps of a 1 MiB PUT acknowledgement, against the floor (docs/benchmarks.md,
"The journal record's sync over a recycled log"): each iteration runs, in turn,
  floor     write 1 MiB, fsync;
  append    write 1 MiB, fsync it beside an fsync of its directory, append 400 bytes to a log, fdatasync;
  over      the same, the 400 bytes written over a log written (and synced) beforehand,
while BACKGROUND writers write 4 x 1 MiB then fsync, in a loop. Prints p50 / p90 / p99 in ms.

Usage: journal-sync.py DIR [ITERATIONS=400] [BACKGROUND=2]   (DIR on the filesystem to measure,
e.g. the journaled volume of bench/volume.sh)
"""
import os
import sys
import threading
import time

directory = sys.argv[1]
iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 400
background = int(sys.argv[3]) if len(sys.argv) > 3 else 2
blobs = os.path.join(directory, "blobs")
os.makedirs(blobs, exist_ok=True)
body = os.urandom(1 << 20)
record = os.urandom(400)
stop = False


def writer(i):
    path = os.path.join(directory, "background-%d" % i)
    while not stop:
        with open(path, "wb") as f:
            for _ in range(4):
                f.write(os.urandom(1 << 20))
                time.sleep(0.05)
            f.flush()
            os.fsync(f.fileno())


for i in range(background):
    threading.Thread(target=writer, args=(i,), daemon=True).start()

appended = os.open(os.path.join(directory, "log-appended"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
over = os.open(os.path.join(directory, "log-over"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.write(over, b"\0" * (8 << 20))
os.fsync(over)
os.lseek(over, 0, os.SEEK_SET)
blobs_fd = os.open(blobs, os.O_RDONLY)
seq = 0


def blob():
    global seq
    seq += 1
    fd = os.open(os.path.join(blobs, str(seq)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, body)
    return fd


def commit(log):
    fd = blob()
    start = time.perf_counter()
    beside = threading.Thread(target=os.fsync, args=(blobs_fd,))
    beside.start()
    os.fsync(fd)
    beside.join()
    os.close(fd)
    os.write(log, record)
    os.fdatasync(log)
    return time.perf_counter() - start


times = {"floor": [], "append": [], "over": []}
for _ in range(iterations):
    fd = blob()
    start = time.perf_counter()
    os.fsync(fd)
    times["floor"].append(time.perf_counter() - start)
    os.close(fd)
    times["append"].append(commit(appended))
    times["over"].append(commit(over))
    if seq > 300:
        for name in os.listdir(blobs):
            os.unlink(os.path.join(blobs, name))
        seq = 0
stop = True
for kind, v in times.items():
    v.sort()
    print("%-7s p50 %.2f  p90 %.2f  p99 %.2f ms" % (
        kind, v[len(v) // 2] * 1e3, v[int(len(v) * 0.9)] * 1e3, v[int(len(v) * 0.99)] * 1e3))
