"""The image's restore tool (oriole-image/restore.py) against an OrioleDB-shaped bucket in moto,
read through a real perch: it rebuilds exactly the data directory of the last checkpoint, with the
undo files and WAL a checkpoint taken under load needs, many objects at a time.

OrioleDB's upstream loader (orioledb_s3_loader.py) gets four things wrong that these tests pin
down: it reads the undo ranges from the wrong offsets of the control file, asks for
`orioledb_data/...` where undo lives under `orioledb_undo/...`, writes the undo files relative to
its working directory instead of the data directory, and skips the last undo file of each range.
"""

import http.client
import http.server
import importlib.util
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

import oriole_bucket
from conftest import DEV_KEY, DEV_SECRET, REGION, clean_env

RESTORE = Path(__file__).resolve().parents[3] / "oriole-image" / "restore.py"
UNDO = oriole_bucket.UNDO_FILE_SIZE


def load_restore():
    spec = importlib.util.spec_from_file_location("perch_oriole_restore", RESTORE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


restore = load_restore()


@pytest.fixture(scope="module")
def layout():
    # Sizes / 256: the same keys, ~1.7 MB in all.
    return oriole_bucket.Layout(scale=256)


@pytest.fixture
def stocked(moto, perch_factory, layout):
    """A bucket holding `layout`, put straight into moto, and a fresh perch in front of moto."""
    bucket = "oriole-%s" % uuid.uuid4().hex[:12]
    s3 = moto.client()
    s3.create_bucket(Bucket=bucket)
    oriole_bucket.upload(s3, bucket, layout)
    perch = perch_factory("perch", origin_url=moto.url, origin="moto")
    return perch, bucket, s3


def run_tool(perch, bucket, data_dir, cwd, *extra):
    env = clean_env(AWS_ACCESS_KEY_ID=DEV_KEY, AWS_SECRET_ACCESS_KEY=DEV_SECRET, AWS_DEFAULT_REGION=REGION)
    return subprocess.run(
        [sys.executable, str(RESTORE), "--endpoint", perch.path_url, "--bucket", bucket,
         "--data-dir", str(data_dir), *extra],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def files_and_dirs(tree):
    files = {k: v for k, v in tree.items() if v is not None}
    dirs = {k.rstrip("/") for k, v in tree.items() if v is None}
    return files, dirs


def test_a_restore_through_perch_rebuilds_the_last_checkpoint_exactly(stocked, layout, tmp_path):
    perch, bucket, _ = stocked
    data_dir, cwd = tmp_path / "pgdata", tmp_path / "cwd"
    cwd.mkdir()
    r = run_tool(perch, bucket, data_dir, cwd)
    assert r.returncode == 0, r.stderr
    assert "checkpoint %d" % layout.checkpoint in r.stdout, r.stdout

    got_files, got_dirs = files_and_dirs(oriole_bucket.restored(data_dir))
    want_files, want_dirs = files_and_dirs(layout.expected)
    assert sorted(got_files) == sorted(want_files)
    wrong = [k for k in want_files if got_files[k] != want_files[k]]
    assert wrong == [], "files with other bytes than the checkpoint's: %s" % wrong[:10]
    assert want_dirs <= got_dirs, sorted(want_dirs - got_dirs)
    # The undo files and both WAL segments a checkpoint taken under load needs are there, in the
    # data directory (upstream: wrong range, wrong prefix, written to its working directory, the
    # last file of the range left out).
    for name in ("orioledb_undo/0000000000system", "orioledb_undo/0000000001data",
                 "orioledb_undo/0000000002data", "pg_wal/00000001000000000000000A",
                 "pg_wal/00000001000000000000000B"):
        assert name in got_files, name
    assert list(cwd.iterdir()) == [], "the tool wrote into its working directory"
    assert not list(data_dir.rglob("*.restore-tmp"))


def test_the_undo_files_come_from_the_ranges_the_checkpoint_retains(layout):
    control = layout.objects["data/%d/orioledb_data/control" % layout.checkpoint]
    assert restore.undo_files(control) == [
        "orioledb_undo/0000000001data", "orioledb_undo/0000000002data",
        "orioledb_undo/0000000000system"]
    # A range that ends on a file boundary ends in the file before it; one that ends a byte past
    # it includes the next file (upstream leaves the last file of every range out).
    at_boundary = oriole_bucket.oriole_control(7, (UNDO, 3 * UNDO), (0, 0))
    assert restore.undo_files(at_boundary) == ["orioledb_undo/0000000001data",
                                               "orioledb_undo/0000000002data"]
    one_past = oriole_bucket.oriole_control(7, (UNDO, 3 * UNDO + 1), (5 * UNDO, 5 * UNDO + 1))
    assert restore.undo_files(one_past) == [
        "orioledb_undo/0000000001data", "orioledb_undo/0000000002data",
        "orioledb_undo/0000000003data", "orioledb_undo/0000000005system"]
    # The fields the upstream loader reads instead (mmapDataLength, lastUndoLocation) do not
    # change the answer.
    other_fields = oriole_bucket.oriole_control(7, (UNDO, 3 * UNDO), (0, 0), mmap_length=9 * UNDO)
    assert restore.undo_files(other_fields) == restore.undo_files(at_boundary)
    # A damaged control file is refused, never read as ranges.
    damaged = bytearray(control)
    damaged[88] ^= 1
    with pytest.raises(restore.RestoreError, match="CRC"):
        restore.undo_files(bytes(damaged))


def test_the_wal_from_the_redo_point_to_the_checkpoint_record_is_restored(layout):
    seg = oriole_bucket.WAL_SEGMENT_SIZE
    control = oriole_bucket.pg_control(checkpoint_lsn=0x0B * seg + 40, redo_lsn=0x0A * seg + 40)
    assert restore.wal_segments(control) == ["00000001000000000000000A", "00000001000000000000000B"]
    # Past the 256th segment of a WAL id: the id moves on.
    control = oriole_bucket.pg_control(checkpoint_lsn=0x100 * seg + 8, redo_lsn=0xFF * seg, timeline=2)
    assert restore.wal_segments(control) == ["0000000200000000000000FF", "000000020000000100000000"]


def test_a_missing_undo_file_fails_the_restore(stocked, tmp_path):
    perch, bucket, s3 = stocked
    s3.delete_object(Bucket=bucket, Key="orioledb_undo/0000000002data")
    r = run_tool(perch, bucket, tmp_path / "pgdata", tmp_path)
    assert r.returncode == 1, r.stdout
    assert "orioledb_undo/0000000002data is missing" in r.stderr, r.stderr


def test_an_incomplete_newest_checkpoint_is_passed_over(stocked, layout, tmp_path):
    perch, bucket, s3 = stocked
    n = layout.checkpoint + 1
    # The newest checkpoint's files went up but its control files never did.
    s3.put_object(Bucket=bucket, Key="data/%d/global/" % n, Body=b"")
    s3.put_object(Bucket=bucket, Key="data/%d/base/5/1259" % n, Body=b"half")
    r = run_tool(perch, bucket, tmp_path / "pgdata", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "checkpoint %d" % layout.checkpoint in r.stdout, r.stdout


class Counting(restore.Restore):
    """The restore, counting the GETs it has under way at once."""

    def __init__(self, *args):
        super().__init__(*args)
        self.now = 0
        self.most = 0
        self.count_lock = threading.Lock()

    def get(self, name):
        with self.count_lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return super().get(name)
        finally:
            with self.count_lock:
                self.now -= 1


def test_downloads_run_in_parallel_up_to_the_bound(stocked, layout, tmp_path):
    perch, bucket, _ = stocked
    jobs = 4
    s3 = restore.S3(perch.path_url, bucket, DEV_KEY, DEV_SECRET, REGION)
    tool = Counting(s3, "", str(tmp_path / "pgdata"), jobs, False)
    tool.run()
    assert tool.fetched > 100
    assert 2 <= tool.most <= jobs, tool.most
    got_files, _ = files_and_dirs(oriole_bucket.restored(tmp_path / "pgdata"))
    assert sorted(got_files) == sorted(k for k, v in layout.expected.items() if v is not None)


def test_its_listings_page_and_decode_keys_as_the_sdk_does(stocked):
    """The tool's own S3 client (signed requests Perch checks), against boto3's view of the same
    bucket: every page of a listing, keys that need encoding, common prefixes."""
    perch, bucket, s3 = stocked
    odd = ["data/odd/a b+c", "data/odd/ü%41", "data/odd/x&y=z;", "data/odd/dir/~t"]
    for k in odd:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    tool = restore.S3(perch.path_url, bucket, DEV_KEY, DEV_SECRET, REGION)
    sdk = boto3.client("s3", endpoint_url=perch.path_url, region_name=REGION, aws_access_key_id=DEV_KEY,
                       aws_secret_access_key=DEV_SECRET, config=Config(s3={"addressing_style": "path"}))
    want = [(o["Key"], o["Size"]) for page in sdk.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="data/") for o in page.get("Contents", [])]
    keys, prefixes = tool.list("data/", page_size=7)
    assert len(want) > 30 and keys == want
    keys, prefixes = tool.list("data/odd/", delimiter="/", page_size=2)
    assert sorted(k for k, _ in keys) == sorted(odd[:3]) and prefixes == ["data/odd/dir/"]
    for k in odd:
        assert tool.get(k) == k.encode()
        assert tool.exists(k)
    assert tool.get("data/odd/none") is None and not tool.exists("data/odd/none")
    # A refused signature is not retried and says what it was.
    wrong = restore.S3(perch.path_url, bucket, DEV_KEY, "not-the-secret", REGION)
    with pytest.raises(restore.S3Error, match="403 SignatureDoesNotMatch"):
        wrong.get(odd[0])


class Faulty:
    """In front of Perch: the first answer to each request is a fault a server or a network
    gives (503 SlowDown, 500 InternalError, or for a GET with a body a 200 whose body breaks off
    with the connection); a request sent again passes through, its signature untouched. Paths
    containing one of `always` get a fault every time."""

    def __init__(self, upstream_port, always=()):
        seen = set()
        self.faults = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def forward(self):
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                try:
                    conn.request(self.command, self.path, headers=dict(self.headers.items()))
                    r = conn.getresponse()
                    payload = r.read()
                finally:
                    conn.close()
                first = (self.command, self.path) not in seen
                seen.add((self.command, self.path))
                if any(a in self.path for a in always):
                    first = True
                if first:
                    proxy.faults += 1
                    if self.command == "GET" and len(payload) > 1 and proxy.faults % 3 == 0:
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload[:len(payload) // 2])
                        self.close_connection = True
                        return
                    status, code = (503, b"SlowDown") if proxy.faults % 3 == 1 else (500, b"InternalError")
                    msg = b"<Error><Code>" + code + b"</Code><Message>injected</Message></Error>"
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(msg)
                    return
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "server", "date"):
                        self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_restore_rides_out_server_errors_and_broken_bodies(stocked, layout, tmp_path):
    perch, bucket, _ = stocked
    faulty = Faulty(perch.port)
    try:
        data_dir = tmp_path / "pgdata"
        env = clean_env(AWS_ACCESS_KEY_ID=DEV_KEY, AWS_SECRET_ACCESS_KEY=DEV_SECRET, AWS_DEFAULT_REGION=REGION)
        r = subprocess.run([sys.executable, str(RESTORE), "--endpoint", faulty.url, "--bucket", bucket,
                            "--data-dir", str(data_dir)], env=env, capture_output=True, text=True, timeout=120)
    finally:
        faulty.close()
    assert r.returncode == 0, r.stderr
    assert faulty.faults > 100
    got_files, _ = files_and_dirs(oriole_bucket.restored(data_dir))
    want_files, _ = files_and_dirs(layout.expected)
    assert got_files == want_files


def test_an_optional_file_the_server_keeps_failing_fails_the_restore(stocked, tmp_path):
    """The checksum lists are optional (a first checkpoint has none), but only a 404 says a file
    is absent: one that keeps failing must fail the restore, never leave out the files it names."""
    perch, bucket, _ = stocked
    faulty = Faulty(perch.port, always=("orioledb_data/file_checksums",))
    try:
        env = clean_env(AWS_ACCESS_KEY_ID=DEV_KEY, AWS_SECRET_ACCESS_KEY=DEV_SECRET, AWS_DEFAULT_REGION=REGION)
        r = subprocess.run([sys.executable, str(RESTORE), "--endpoint", faulty.url, "--bucket", bucket,
                            "--data-dir", str(tmp_path / "pgdata")], env=env, capture_output=True, text=True,
                           timeout=120)
    finally:
        faulty.close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "file_checksums" in r.stderr, r.stderr


def test_a_restore_without_keys_says_which_are_missing(stocked, tmp_path):
    perch, bucket, _ = stocked
    env = clean_env(AWS_DEFAULT_REGION=REGION)
    r = subprocess.run([sys.executable, str(RESTORE), "--endpoint", perch.path_url, "--bucket", bucket,
                        "--data-dir", str(tmp_path / "pgdata")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set" in r.stderr, r.stderr
