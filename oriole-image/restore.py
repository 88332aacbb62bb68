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
Credentials come from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN if
set), AWS_DEFAULT_REGION or AWS_REGION (default us-east-1).

It speaks S3 itself (three calls: ListObjectsV2, HEAD and GET, signed with SigV4 over http.client)
rather than through boto3: on a small Machine importing boto3 and building its client costs about
0.4 s of CPU and each call about a millisecond more, which is most of a restore's CPU, and a restore
is CPU-bound there (docs/benchmarks.md).
Exit status 0 on success; on any failure it says what and exits 1 (the data directory is then
incomplete: the caller clears it and tries again).
"""

import argparse
from collections import deque
import datetime
import hashlib
import hmac
import http.client
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

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


class Missing(RestoreError):
    """The object does not exist (404): the one failure an optional file may have."""


class S3Error(RestoreError):
    """An answer other than 2xx, after the retries: its HTTP status and S3 error code."""

    def __init__(self, status, code, message, what):
        super().__init__("%s: %s %s%s" % (what, status, code, (": " + message) if message else ""))
        self.status = status
        self.code = code


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# What is retried, as the SDKs' standard mode does: throttling, the server's transient errors, and
# a connection or a body that broke (with a backoff of 0.5 s doubling, jittered).
RETRIED_STATUS = (429, 500, 502, 503, 504)
RETRIED_CODES = ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                 "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable")
# A kept-alive connection the server closed while it was idle fails the next request at once.
STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _quote(text, safe):
    return urllib.parse.quote(text, safe=safe)


class S3:
    """The S3 calls a restore makes, on one bucket, path-style, signed with SigV4 (header
    `host;x-amz-content-sha256;x-amz-date`, an empty payload), each thread on its own kept-alive
    connection."""

    def __init__(self, endpoint, bucket, access_key, secret_key, region, token=None, attempts=5,
                 timeout=60.0):
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise RestoreError("--endpoint must be http://HOST:PORT or https://HOST:PORT, not %r" % endpoint)
        if not access_key or not secret_key:
            raise RestoreError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set (Perch's client pair)")
        self.https = url.scheme == "https"
        self.hostname = url.hostname
        self.port = url.port or (443 if self.https else 80)
        self.host = url.netloc.rsplit("@", 1)[-1]
        self.base = url.path.rstrip("/")
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.token = token
        self.attempts = attempts
        self.timeout = timeout
        self.local = threading.local()
        self.keys = {}
        # Set when the restore fails: requests under way give up instead of retrying.
        self.stop = threading.Event()

    def _connection(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = cls(self.hostname, self.port, timeout=self.timeout)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.local.conn = conn
        return conn

    def _drop_connection(self):
        conn = getattr(self.local, "conn", None)
        self.local.conn = None
        if conn is not None:
            conn.close()

    def _signing_key(self, day):
        key = self.keys.get(day)
        if key is None:
            key = ("AWS4" + self.secret_key).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self.keys[day] = key
        return key

    def _headers(self, method, path, query):
        amz_date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        headers = {"host": self.host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": amz_date}
        if self.token:
            headers["x-amz-security-token"] = self.token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join([method, path, query, "".join("%s:%s\n" % (n, headers[n]) for n in names),
                               signed, EMPTY_SHA256])
        scope = "%s/%s/s3/aws4_request" % (amz_date[:8], self.region)
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(amz_date[:8]), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
            self.access_key, scope, signed, signature)
        return headers

    def request(self, method, key, params=()):
        """The body of one call on `key` ("" for the bucket), retried as the SDKs' standard mode
        retries; an answer other than 2xx after that raises S3Error, a connection that keeps
        failing RestoreError (a body shorter than its Content-Length is a broken one:
        http.client raises IncompleteRead)."""
        path = _quote("%s/%s/%s" % (self.base, self.bucket, key), safe="/~")
        query = "&".join("%s=%s" % (_quote(k, safe="~"), _quote(v, safe="~")) for k, v in sorted(params))
        what = "%s s3://%s/%s" % (method, self.bucket, key)
        attempt = 0
        stale_retried = False
        while True:
            attempt += 1
            if self.stop.is_set():
                raise RestoreError("%s: the restore is stopping" % what)
            reused = getattr(self.local, "conn", None) is not None
            try:
                conn = self._connection()
                conn.request(method, path + ("?" + query if query else ""),
                             headers=self._headers(method, path, query))
                resp = conn.getresponse()
                body = resp.read()
                if resp.will_close:
                    self._drop_connection()
            except (OSError, http.client.HTTPException) as e:
                self._drop_connection()
                if reused and not stale_retried and isinstance(e, STALE_CONNECTION):
                    # A kept-alive connection the server had closed: no attempt spent.
                    stale_retried = True
                    attempt -= 1
                    continue
                if attempt >= self.attempts:
                    raise RestoreError("%s: %s" % (what, str(e) or type(e).__name__)) from e
                self._backoff(attempt)
                continue
            if 200 <= resp.status < 300:
                return body
            code, message = _error_of(body, resp.status)
            if attempt >= self.attempts or (resp.status not in RETRIED_STATUS and code not in RETRIED_CODES):
                raise S3Error(resp.status, code, message, what)
            self._backoff(attempt)

    def _backoff(self, attempt):
        # 0.5, 1, 2, 4 s (jittered down to half): 7.5 s at most over 5 attempts.
        self.stop.wait(random.uniform(0.5, 1.0) * min(20.0, 0.5 * 2 ** (attempt - 1)))

    def list(self, prefix, delimiter=None, page_size=None):
        """([(key, size)], [common prefix]) under `prefix`, every page."""
        keys, prefixes, token = [], [], None
        while True:
            params = [("list-type", "2"), ("prefix", prefix), ("encoding-type", "url")]
            if page_size:
                params.append(("max-keys", str(page_size)))
            if delimiter:
                params.append(("delimiter", delimiter))
            if token:
                params.append(("continuation-token", token))
            body = self.request("GET", "", params)
            try:
                root = ElementTree.fromstring(body)
            except ElementTree.ParseError as e:
                raise RestoreError("a listing of %s is not XML: %s" % (prefix, e)) from e
            if root.tag != S3_NS + "ListBucketResult":
                raise RestoreError("a listing of %s answered %s, not a ListBucketResult" % (prefix, root.tag))
            for c in root.iter(S3_NS + "Contents"):
                keys.append((urllib.parse.unquote_plus(c.findtext(S3_NS + "Key", "")),
                             int(c.findtext(S3_NS + "Size", "0"))))
            for c in root.iter(S3_NS + "CommonPrefixes"):
                prefixes.append(urllib.parse.unquote_plus(c.findtext(S3_NS + "Prefix", "")))
            if root.findtext(S3_NS + "IsTruncated", "false") != "true":
                return keys, prefixes
            token = root.findtext(S3_NS + "NextContinuationToken")
            if not token:
                raise RestoreError("a listing of %s is truncated but names no continuation" % prefix)

    def exists(self, key):
        try:
            self.request("HEAD", key)
            return True
        except S3Error as e:
            if e.status == 404:
                return False
            raise

    def get(self, key):
        """The whole object, or None if it does not exist."""
        try:
            return self.request("GET", key)
        except S3Error as e:
            if e.status == 404:
                return None
            raise


def _error_of(body, status):
    """The S3 error code and message of an error answer (a HEAD's has no body: its status)."""
    try:
        root = ElementTree.fromstring(body)
        return root.findtext("Code") or str(status), root.findtext("Message") or ""
    except ElementTree.ParseError:
        return str(status), ""


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
    def __init__(self, s3, prefix, data_dir, jobs, verbose):
        self.s3 = s3
        self.bucket = s3.bucket
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
        keys, prefixes = self.s3.list(self.key(prefix), delimiter)
        return [(k[len(self.prefix):], size) for k, size in keys], [p[len(self.prefix):] for p in prefixes]

    def exists(self, name):
        return self.s3.exists(self.key(name))

    def get(self, name):
        """The whole object `name` (one GET)."""
        body = self.s3.get(self.key(name))
        if body is None:
            raise Missing("%s is missing from bucket %s" % (self.key(name), self.bucket))
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
        more tasks, which go to the front of the queue as soon as it ends (the small files'
        archives, found by a listing, are then fetched before the rest of the queue, not after
        it). The first failure fails the restore: the tasks not yet started are dropped."""
        queue = deque(tasks)
        running = set()
        with ThreadPoolExecutor(self.jobs) as pool:
            try:
                while queue or running:
                    while queue and len(running) < self.jobs:
                        running.add(pool.submit(*queue.popleft()))
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in done:
                        queue.extendleft(reversed(list(f.result() or ())))
            except BaseException:
                # The tasks under way stop at their next retry instead of using all of theirs.
                self.s3.stop.set()
                raise

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
        """fetch_to, where an object that does not exist is no failure (any other is)."""
        try:
            self.fetch_to(name, path)
        except Missing:
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
    try:
        s3 = S3(args.endpoint, args.bucket, os.environ.get("AWS_ACCESS_KEY_ID", ""),
                os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
                os.environ.get("AWS_SESSION_TOKEN") or None)
        Restore(s3, args.prefix, args.data_dir, args.jobs, args.verbose).run()
    except (RestoreError, OSError, subprocess.CalledProcessError) as e:
        print("perch-oriole-restore: error: %s" % e, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
