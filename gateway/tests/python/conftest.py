"""Fixtures driving the real `perch` binary with boto3.

* `perch_bin`: the binary, from $PERCH_BIN or /var/tmp/perch-target/release/perch (a missing binary
  is an error, never a skip).
* `moto`: one `moto_server` on a free port for the session (a missing moto_server is an error).
* `perch`: a fresh `perch serve` for each test, parametrized over its origin: "dir" (the embedded
  directory origin, `<data-dir>/origin`) and "moto" (the moto server above).
* `client(perch, style)`: boto3 S3 clients, path style (http://127.0.0.1:PORT) or virtual-hosted
  (http://localhost:PORT, so requests carry `Host: BUCKET.localhost:PORT`).
* `*.localhost` does not resolve through getaddrinfo here, so an autouse fixture maps every
  `*.localhost` name to 127.0.0.1 for the duration of each test (boto3, urllib3 and requests all
  resolve through `socket.getaddrinfo`).
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import boto3
import botocore.client
import botocore.httpchecksum
import pytest
import requests
from botocore.config import Config

DEFAULT_BIN = "/var/tmp/perch-target/release/perch"
DEV_KEY = "perch-dev"
DEV_SECRET = "perch-dev-secret"
MOTO_KEY = "testing"
MOTO_SECRET = "testing"
REGION = "us-east-1"

# The clients here are configured in code only: a developer's ~/.aws/config (a signature version,
# a multipart chunk size, a profile's endpoint) must not change what the tests send.
for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


# --------------------------------------------------------------------------- name resolution

_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    if isinstance(host, bytes):
        name = host.decode("ascii", "replace")
    else:
        name = host
    if isinstance(name, str) and name.lower().rstrip(".").endswith(".localhost"):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True)
def resolve_localhost_subdomains(monkeypatch):
    """Every `*.localhost` name resolves to 127.0.0.1 (virtual-hosted requests and presigned URLs)."""
    monkeypatch.setattr(socket, "getaddrinfo", _getaddrinfo)


# --------------------------------------------------------------------------- helpers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra):
    """The environment for a child: no inherited PERCH_* or AWS_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERCH_", "AWS_"))}
    env.update(extra)
    return env


def tail(path, n=4000):
    try:
        data = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return data[-n:]


# --------------------------------------------------------------------------- perch binary


@pytest.fixture(scope="session")
def perch_bin():
    path = os.environ.get("PERCH_BIN") or DEFAULT_BIN
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f"perch binary not found at {path!r}. Build it first:\n"
            "  export CARGO_TARGET_DIR=/var/tmp/perch-target; cargo build --release -p perch-gateway\n"
            "or point $PERCH_BIN at a perch binary.",
            pytrace=False,
        )
    return path


# --------------------------------------------------------------------------- moto


class Moto:
    def __init__(self, proc, port, log):
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def client(self):
        """A boto3 client talking to moto directly (not through Perch)."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=MOTO_KEY,
            aws_secret_access_key=MOTO_SECRET,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"}),
        )


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    exe = shutil.which("moto_server")
    if exe is None:
        pytest.fail(
            "moto_server is not on PATH: pip install 'moto[server]' (see gateway/tests/python/requirements.txt)",
            pytrace=False,
        )
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"moto_server exited with {proc.returncode}:\n{tail(log)}", pytrace=False)
        try:
            requests.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not answer on port {port} within 30 s:\n{tail(log)}", pytrace=False)
            time.sleep(0.1)
    yield Moto(proc, port, log)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- perch


class Perch:
    def __init__(self, proc, s3_addr, admin_addr, data_dir, log, origin):
        self.proc = proc
        self.s3_addr = s3_addr
        self.admin_addr = admin_addr
        self.data_dir = data_dir
        self.log = log
        self.origin = origin  # "dir" or "moto"
        self.port = int(s3_addr.rsplit(":", 1)[1])

    @property
    def path_url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def virtual_url(self):
        return f"http://localhost:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_perch(perch_bin, data_dir, origin_url=None, role=None, origin="dir", args=()):
    """Starts `perch serve` on free ports and waits for its `listening ...` line."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}.perch.log"
    cmd = [
        perch_bin,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        "--domain",
        "localhost",
        # Stop as soon as the write-back journal is empty: no database checkpoint follows here.
        "--drain-quiet",
        "0s",
    ]
    # Perch's own default filter unless PERCH_TEST_LOG names one.
    env = clean_env(**({"PERCH_LOG": os.environ["PERCH_TEST_LOG"]} if "PERCH_TEST_LOG" in os.environ else {}))
    if origin_url is not None:
        # moto takes the signing region as the bucket's region; us-east-1 needs no location
        # constraint (perch's default, `auto`, is Tigris's).
        cmd += ["--origin", origin_url, "--origin-region", REGION]
        env["PERCH_ORIGIN_ACCESS_KEY_ID"] = MOTO_KEY
        env["PERCH_ORIGIN_SECRET_ACCESS_KEY"] = MOTO_SECRET
    if role is not None:
        cmd += ["--role", role]
    cmd += list(args)
    errf = open(log, "wb")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=errf, env=env, start_new_session=True
    )
    errf.close()

    line = {}

    def read_line():
        line["v"] = proc.stdout.readline().decode(errors="replace")

    t = threading.Thread(target=read_line, daemon=True)
    t.start()
    t.join(20)
    first = line.get("v", "")
    if not first.startswith("listening "):
        proc.kill()
        proc.wait()
        pytest.fail(
            f"perch did not print its listening line (got {first!r}); command: {' '.join(cmd)}\n"
            f"stderr:\n{tail(log)}",
            pytrace=False,
        )
    fields = dict(part.split("=", 1) for part in first.split()[1:])
    return Perch(proc, fields["s3"], fields["admin"], data_dir, log, origin)


@pytest.fixture
def perch_factory(perch_bin, tmp_path):
    """Starts extra perch processes (stopped at teardown)."""
    started = []

    def factory(name, origin_url=None, role=None, origin="dir", args=()):
        p = start_perch(perch_bin, tmp_path / name, origin_url=origin_url, role=role, origin=origin, args=args)
        started.append(p)
        return p

    yield factory
    crashed = [p for p in started if p.proc.poll() is not None]
    for p in started:
        p.stop()
    if crashed:
        pytest.fail(
            "perch exited during the test:\n"
            + "\n".join(f"exit {p.proc.returncode}; stderr:\n{tail(p.log)}" for p in crashed),
            pytrace=False,
        )


@pytest.fixture(params=["dir", "moto"])
def perch(request, perch_factory):
    """A fresh perch, in front of the directory origin or of moto."""
    if request.param == "dir":
        return perch_factory("perch", origin="dir")
    moto = request.getfixturevalue("moto")
    return perch_factory("perch", origin_url=moto.url, origin="moto")


# --------------------------------------------------------------------------- clients


def flush(perch_bin, perch):
    """`perch flush`: the primary acknowledges writes before they are in the origin, which is
    what another Perch, or a client of the origin, reads from."""
    subprocess.run([perch_bin, "flush", "--admin", perch.admin_addr, "--timeout", "60s"], check=True,
                   capture_output=True)


def make_client(perch, style="path", key=DEV_KEY, secret=DEV_SECRET, **config):
    """A boto3 S3 client for `perch`: style "path" or "virtual"."""
    if style == "path":
        endpoint = perch.path_url
    elif style == "virtual":
        endpoint = perch.virtual_url
    else:
        raise ValueError(style)
    cfg = Config(
        s3={"addressing_style": style},
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=20,
        **config,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=cfg,
    )


@pytest.fixture
def client():
    return make_client


@pytest.fixture
def bucket(perch):
    """A new, empty bucket (unique name: moto is shared by the whole session)."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    make_client(perch).create_bucket(Bucket=name)
    return name


# --------------------------------------------------------------------------- checksum trailers


@pytest.fixture
def trailer_checksums(monkeypatch):
    """Makes botocore send flexible checksums as it does over https: an aws-chunked body
    (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`) with the checksum in a trailer. Over plain http botocore
    puts the checksum in a header instead; only that location decision is changed here."""
    original = botocore.httpchecksum.resolve_checksum_context

    def resolve(request, operation_model, params):
        original(request, operation_model, params)
        algorithm = request["context"].get("checksum", {}).get("request_algorithm")
        if isinstance(algorithm, dict) and operation_model.has_streaming_input:
            algorithm["in"] = "trailer"

    monkeypatch.setattr(botocore.client, "resolve_checksum_context", resolve)


@pytest.fixture(params=["header", "trailer"])
def checksum_location(request):
    """Where botocore puts flexible checksums: "header" (its choice over http) or "trailer"
    (aws-chunked with the checksum in a trailer, its choice over https)."""
    if request.param == "trailer":
        request.getfixturevalue("trailer_checksums")
    return request.param


def record_requests(s3, operation):
    """Records the headers of every `operation` request `s3` sends, after signing."""
    seen = []

    def before_send(request, **kwargs):
        seen.append({k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()})

    s3.meta.events.register(f"before-send.s3.{operation}", before_send)
    return seen
