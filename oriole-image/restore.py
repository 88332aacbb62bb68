#!/usr/bin/env python3
"""perch-oriole-restore: restores an OrioleDB data directory from its S3 bucket (the last complete
checkpoint), many objects at a time. It replaces OrioleDB's orioledb_s3_loader.py, which fetches
one object at a time (a HEAD and a GET each) and, for the undo logs a checkpoint taken under load
needs, reads the ranges from the wrong offsets of the control file, asks for orioledb_data/...
where they live under orioledb_undo/..., writes them to the working directory instead of the data
directory, and skips the last file of each range; it also fetches only the WAL segment of the
checkpoint's redo point, not the one its checkpoint record may lie in.

What a checkpoint N is, in the bucket (as OrioleDB's S3 mode writes it):
  data/N/...                    PostgreSQL's files, and orioledb_data/small_files_K archives
  data/<M>/<file>               files unchanged since checkpoint M < N (orioledb_data/file_checksums)
  data/<M>/.../small_files_K    small files unchanged since M (orioledb_data/small_file_checksums)
  orioledb_data/N/<db>/<rel>.map   the maps of the tables (the data parts are read lazily later)
  orioledb_undo/<NN><NNNNNNNN>data|system   undo files, 64 MiB each
  wal/<segment>                 WAL segments
  data/orioledb_data/control    the newest checkpoint's OrioleDB control file
A checkpoint is complete once data/N/global/pg_control and data/N/orioledb_data/control exist.

Usage: restore.py --endpoint http://HOST:PORT --bucket BUCKET --data-dir DIR [--prefix P]
                  [--jobs 32] [--verbose]
Credentials come the boto3 way (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).
Exit status 0 on success; on any failure it says what and exits 1 (the data directory is then
incomplete: the caller clears it and tries again).
"""

import argparse
import os
import re
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

UNDO_FILE_SIZE = 0x4000000

# OrioleDB's CheckpointControl (include/checkpoint/control.h, orioledb ee4b4810, x86-64 layout):
# controlIdentifier u64 @0, lastCheckpointNumber u32 @8, lastCSN @16, lastXid @24,
# lastUndoLocation @32, toastConsistentPtr @40, replayStartPtr @48, sysTreesStartPtr @56,
# mmapDataLength @64, undoInfo[2] @72 (24 bytes each: lastUndoLocation,
# checkpointRetainStartLocation, checkpointRetainEndLocation), checkpointRetainStart/End @120/128,
# checkpointRetainXmin/Xmax @136/144, binaryVersion u32 @152, s3Mode bool @156, crc u32 @160.
ORIOLE_CONTROL_CRC_AT = 160
ORIOLE_UNDO_LOGS = (("data", 72), ("system", 96))  # (file suffix, offset of its undoInfo)

# PostgreSQL 17's ControlFileData (catalog/pg_control.h): pg_control_version u32 @8,
# checkPoint u64 @32, checkPointCopy.redo u64 @40, checkPointCopy.ThisTimeLineID u32 @48,
# xlog_seg_size u32 @228, crc u32 @288.
PG_CONTROL_VERSION = 1700
PG_CONTROL_CRC_AT = 288


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class RestoreError(Exception):
    pass


def undo_files(control):
    """The undo files a checkpoint needs, from its OrioleDB control file: for each undo log, every
    file of [checkpointRetainStartLocation, checkpointRetainEndLocation)."""
    if len(control) < ORIOLE_CONTROL_CRC_AT + 4:
        raise RestoreError("the OrioleDB control file is too short")
    (want,) = struct.unpack_from("<I", control, ORIOLE_CONTROL_CRC_AT)
    if crc32c(control[:ORIOLE_CONTROL_CRC_AT]) != want:
        raise RestoreError(
            "the OrioleDB control file's CRC does not match: another OrioleDB version "
            "(this tool knows the layout of orioledb ee4b4810)")
    names = []
    for suffix, at in ORIOLE_UNDO_LOGS:
        start, end = struct.unpack_from("<QQ", control, at + 8)
        if end <= start:
            continue
        for num in range(start // UNDO_FILE_SIZE, (end - 1) // UNDO_FILE_SIZE + 1):
            names.append("orioledb_undo/%02X%08X%s" % (num >> 32, num & 0xFFFFFFFF, suffix))
    return names


def wal_segments(pg_control, pg_bin=None, data_dir=None):
    """The WAL segments from the checkpoint's redo point to its checkpoint record."""
    info = None
    if len(pg_control) >= PG_CONTROL_CRC_AT + 4:
        (version,) = struct.unpack_from("<I", pg_control, 8)
        (want,) = struct.unpack_from("<I", pg_control, PG_CONTROL_CRC_AT)
        if version == PG_CONTROL_VERSION and crc32c(pg_control[:PG_CONTROL_CRC_AT]) == want:
            (checkpoint, redo) = struct.unpack_from("<QQ", pg_control, 32)
            (tli,) = struct.unpack_from("<I", pg_control, 48)
            (seg_size,) = struct.unpack_from("<I", pg_control, 228)
            info = (checkpoint, redo, tli, seg_size)
    if info is None:
        info = _controldata(pg_bin, data_dir)
    checkpoint, redo, tli, seg_size = info
    per_id = 0x100000000 // seg_size
    return ["%08X%08X%08X" % (tli, seg // per_id, seg % per_id)
            for seg in range(redo // seg_size, checkpoint // seg_size + 1)]


def _lsn(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def _controldata(pg_bin, data_dir):
    """pg_controldata's view, for a pg_control this tool cannot read itself."""
    exe = os.path.join(pg_bin, "pg_controldata") if pg_bin else "pg_controldata"
    out = subprocess.run([exe, "-D", data_dir], check=True, capture_output=True, text=True,
                         env=dict(os.environ, LC_ALL="C")).stdout
    f = {k.strip(): v.strip() for k, _, v in (l.partition(":") for l in out.splitlines())}
    return (_lsn(f["Latest checkpoint location"]), _lsn(f["Latest checkpoint's REDO location"]),
            int(f["Latest checkpoint's TimeLineID"]), int(f["Bytes per WAL segment"]))


def parse_checksums(text, checkpoint):
    """`FILE: <name>, CHECKSUM: <sum>, CHECKPOINT: <n>` lines: the files unchanged since an
    earlier checkpoint, with that checkpoint's number."""
    pattern = re.compile(r"^FILE: (?P<f>.+), CHECKSUM: (?P<c>.+), CHECKPOINT: (?P<n>\d+)$")
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        m = pattern.match(line)
        if m is None:
            raise RestoreError("bad line in a checksum file: %r" % line)
        n = int(m.group("n"))
        if n > checkpoint:
            raise RestoreError("a checksum file names checkpoint %d after %d" % (n, checkpoint))
        if n < checkpoint:
            out[m.group("f")] = n
    return out


def unpack_small_files(data, wanted=None):
    """The files packed in a small_files_K archive: (name, bytes), only `wanted` names if given."""
    (count,) = struct.unpack_from("<i", data, 0)
    for i in range(count):
        name_at, data_at, length = struct.unpack_from("<iii", data, 4 + i * 12)
        name = data[name_at:data.index(b"\0", name_at)].decode("ascii")
        if wanted is None or name in wanted:
            yield name, data[data_at:data_at + length]


class Restore:
    def __init__(self, client, bucket, prefix, data_dir, jobs, verbose):
        self.s3 = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.data_dir = os.path.abspath(data_dir)
        self.jobs = jobs
        self.verbose = verbose
        self.fetched = 0
        self.bytes = 0
        self.unpacked = set()
        # Files that come from an earlier checkpoint (set once the checkpoint's lists are read).
        self.earlier = set()
        self.lock = threading.Lock()

    def key(self, name):
        return self.prefix + name

    def say(self, text):
        if self.verbose:
            print(text, flush=True)

    def list(self, prefix, delimiter=None):
        """(keys with sizes, common prefixes) under `prefix`."""
        keys, prefixes = [], []
        kwargs = {"Bucket": self.bucket, "Prefix": self.key(prefix)}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        for page in self.s3.get_paginator("list_objects_v2").paginate(**kwargs):
            keys += [(o["Key"][len(self.prefix):], o["Size"]) for o in page.get("Contents", [])]
            prefixes += [p["Prefix"][len(self.prefix):] for p in page.get("CommonPrefixes", [])]
        return keys, prefixes

    def exists(self, name):
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self.key(name))
            return True
        except ClientError as e:
            if e.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def get(self, name):
        """The whole object `name` (one GET)."""
        try:
            out = self.s3.get_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError as e:
            if e.response["Error"]["Code"] in ("404", "NoSuchKey"):
                raise RestoreError("%s is missing from bucket %s" % (self.key(name), self.bucket))
            raise
        body = out["Body"].read()
        if len(body) != out["ContentLength"]:
            raise RestoreError("%s: %d of %d bytes" % (name, len(body), out["ContentLength"]))
        with self.lock:
            self.fetched += 1
            self.bytes += len(body)
        return body

    def write(self, path, data):
        full = os.path.join(self.data_dir, path)
        if not os.path.realpath(full).startswith(self.data_dir + os.sep):
            raise RestoreError("refusing to write %s outside the data directory" % path)
        os.makedirs(os.path.dirname(full), mode=0o700, exist_ok=True)
        tmp = full + ".restore-tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, full)

    def fetch_to(self, name, path):
        """GETs `name` into `path` (relative to the data directory); small_files archives of
        the checkpoint are unpacked in place."""
        if name.endswith("/"):
            os.makedirs(os.path.join(self.data_dir, path), mode=0o700, exist_ok=True)
            return
        data = self.get(name)
        if re.search(r"(^|/)orioledb_data/small_files_\d+$", path):
            for inner, body in unpack_small_files(data):
                if inner not in self.earlier:
                    self.write(inner, body)
        else:
            self.write(path, data)
        self.say("%s -> %s" % (name, path))

    def parallel(self, tasks):
        """Runs (function, args...) tasks `jobs` at a time, in the order given; a task may return
        more tasks, which join the queue. The first failure fails the restore."""
        with ThreadPoolExecutor(self.jobs) as pool:
            futures = [pool.submit(*t) for t in tasks]
            i = 0
            while i < len(futures):
                more = futures[i].result()
                futures += [pool.submit(*t) for t in more or ()]
                i += 1

    def last_checkpoint(self):
        _, prefixes = self.list("data/", delimiter="/")
        numbers = sorted((int(p.split("/")[1]) for p in prefixes if p.split("/")[1].isdigit()),
                         reverse=True)
        for n in numbers:
            if self.exists("data/%d/global/pg_control" % n) and \
                    self.exists("data/%d/orioledb_data/control" % n):
                return n
        raise RestoreError("bucket %s holds no complete checkpoint" % self.bucket)

    def run(self):
        started = time.monotonic()
        n = self.last_checkpoint()
        self.say("restoring checkpoint %d" % n)
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        base = "data/%d/" % n
        # Two waves, each as wide as --jobs. The first: the checkpoint's listings, and the files
        # that say what else it needs (the control files name the undo and the WAL, the checksum
        # lists the files unchanged since earlier checkpoints).
        first = ["global/pg_control", "orioledb_data/control"]
        optional = ["orioledb_data/file_checksums", "orioledb_data/small_file_checksums"]
        listed = {}
        tasks = [(lambda p: listed.__setitem__(p, self.list(p)[0]), p) for p in (base, "orioledb_data/%d/" % n)]
        tasks += [(self.fetch_to, base + f, f) for f in first]
        tasks += [(self.fetch_if_present, base + f, f) for f in optional]
        self.parallel(tasks)

        # The second: everything else at once, the largest first (the undo files, 64 MiB each, and
        # the WAL segments) so that the longest downloads start soonest.
        tasks = []
        with open(os.path.join(self.data_dir, "orioledb_data/control"), "rb") as f:
            for name in undo_files(f.read()):
                tasks.append((self.fetch_to, name, name))
        with open(os.path.join(self.data_dir, "global/pg_control"), "rb") as f:
            segments = wal_segments(f.read(), os.environ.get("PG_BIN"), self.data_dir)
        # The redo point's segment is archived by the checkpoint; a later one holding the
        # checkpoint record may still be the one being written (then recovery needs none of it).
        tasks.append((self.fetch_to, "wal/" + segments[0], "pg_wal/" + segments[0]))
        for seg in segments[1:]:
            tasks.append((self.fetch_if_present, "wal/" + seg, "pg_wal/" + seg))
        # Small files unchanged since an earlier checkpoint M: list M's archives, then unpack them.
        small = self._read_local("orioledb_data/small_file_checksums", n)
        unchanged = self._read_local("orioledb_data/file_checksums", n)
        # A file named in the checksum lists comes from its earlier checkpoint only (never also
        # from checkpoint N's own objects): no file is written by two tasks at once.
        self.earlier = set(small) | set(unchanged)
        for m in sorted(set(small.values())):
            wanted = {name for name, c in small.items() if c == m}
            tasks.append((self._archives_of, m, wanted))
        # The checkpoint's own files, and the maps of its tables.
        done = {base + f for f in first + optional}
        tasks += [(self.fetch_to, k, k[len(base):]) for k, _ in listed[base]
                  if k not in done and k[len(base):] not in self.earlier]
        for k, _ in listed["orioledb_data/%d/" % n]:
            parts = k.split("/")
            if len(parts) == 4 and parts[3].endswith(".map"):
                # orioledb_data/N/<db>/<rel>.map -> orioledb_data/<db>/<rel>-N.map
                rel = parts[3][:-len(".map")].split(".")[0]
                tasks.append((self.fetch_to, k, "orioledb_data/%s/%s-%d.map" % (parts[2], rel, n)))
        # Files unchanged since an earlier checkpoint live under that checkpoint's data/M/.
        for name, m in unchanged.items():
            tasks.append((self.fetch_to, "data/%d/%s" % (m, name), name))
        self.parallel(tasks)
        missing = set(small) - self.unpacked
        if missing:
            raise RestoreError("small files not found in any archive: %s" % sorted(missing)[:10])
        print("perch-oriole-restore: checkpoint %d: %d objects, %.1f MB in %.2f s" % (
            n, self.fetched, self.bytes / 1e6, time.monotonic() - started), flush=True)

    def _archives_of(self, m, wanted):
        """The tasks that unpack the `wanted` small files from checkpoint `m`'s archives."""
        archives, _ = self.list("data/%d/orioledb_data/small_files_" % m)
        return [(self._unpack_from, k, wanted) for k, _ in archives]

    def fetch_if_present(self, name, path):
        try:
            self.fetch_to(name, path)
        except RestoreError:
            self.say("%s: not in the bucket" % name)

    def _read_local(self, path, n):
        try:
            with open(os.path.join(self.data_dir, path)) as f:
                return parse_checksums(f.read(), n)
        except FileNotFoundError:
            return {}

    def _unpack_from(self, key, wanted):
        for name, body in unpack_small_files(self.get(key), wanted):
            self.write(name, body)
            with self.lock:
                self.unpacked.add(name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True, help="http://HOST:PORT (path-style addressing)")
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", default="", help="key prefix of the database inside the bucket")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--jobs", type=int, default=32, help="objects fetched at a time (default 32)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    client = boto3.client(
        "s3", endpoint_url=args.endpoint,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=args.jobs,
                      retries={"max_attempts": 5, "mode": "standard"}))
    try:
        Restore(client, args.bucket, args.prefix, args.data_dir, args.jobs, args.verbose).run()
    except (RestoreError, ClientError, OSError, subprocess.CalledProcessError) as e:
        print("perch-oriole-restore: error: %s" % e, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
