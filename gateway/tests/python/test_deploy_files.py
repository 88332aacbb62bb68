"""Checks of the deployment files (oriole-image/, deploy/, compose/, fly/), offline: there is no
Docker engine in CI, so nothing here builds or runs an image. Instead:

* every shell script passes shellcheck;
* the OrioleDB entrypoint's config rendering is compared with a sample (and fails clearly when a
  variable is missing or malformed); the restore-tool patch and the release detection are run;
* the entrypoint itself runs against a real `perch serve` with fake `docker-entrypoint.sh` and
  restore tool: new database, restore from the bucket, interrupted restore, stale lock, and no
  secret in anything it prints;
* the Fly supervisor runs with the real perch (and with fakes) to check the stop order and budgets,
  and, with an origin whose uploads can be refused, that Perch drains its write-back journal before
  it exits, or leaves it for the next start when the drain times out;
* compose files are validated by `docker-compose config` (v1, offline) and, like fly.toml (parsed
  with tomllib), checked for services, ports, volumes and environment variables that match
  `perch serve --help`; perch is started with the environment they give it; the stop budgets add
  up, the dirty-data limit fits the volume and drains within the drain timeout, and the sums
  written in the comments and docs are the ones of the settings;
* the Dockerfiles' COPY sources exist, and the two perch build stages are the same.

shellcheck and docker-compose come from apt (.ci/run installs them); a missing tool is an error.
"""

import http.client
import http.server
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

import boto3
import pytest
import requests
import yaml
from botocore.config import Config

from conftest import clean_env, free_port, tail

REPO = Path(__file__).resolve().parents[3]
ORIOLE = REPO / "oriole-image"
COMPOSE = REPO / "compose"
FLY = REPO / "fly"
REGION = "us-east-1"

# The write-back settings every deployment of Perch in front of a database sets (docs/write-back.md).
WRITE_BACK = ["PERCH_DRAIN_TIMEOUT", "PERCH_DRAIN_QUIET", "PERCH_DIRTY_BYTES_MAX", "PERCH_DIRTY_AGE_MAX"]
# The upload rate to Tigris fly.toml may count on: its dirty-data limit must upload within its drain
# timeout at this rate (docs/deploy-fly.md, "Sizing").
FLY_MIN_UPLOAD_RATE = 15e6  # bytes/s
# Compose variables named PERCH_* that are not perch's: the host ports the perch service publishes.
COMPOSE_OWN_PERCH_VARS = {"PERCH_HOST_PORT", "PERCH_ADMIN_HOST_PORT"}


def need(tool, package):
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: apt-get install {package} (.ci/run installs it)", pytrace=False)
    return path


def run(cmd, env=None, timeout=60, cwd=None, check=False):
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"{cmd} exited {r.returncode}:\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}", pytrace=False)
    return r


def base_env(**extra):
    env = clean_env(**extra)
    for k in [k for k in env if k.startswith(("ORIOLE_", "SUPERVISE_", "PG", "POSTGRES_", "BUCKET_NAME"))]:
        del env[k]
    env.update(extra)
    return env


def seconds(value):
    """A perch duration (`150s`, `2m`, `500ms`) or a compose one (`150s`, `2m30s`), in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def size_bytes(value):
    """A perch size (`2GiB`, `512MiB`, `6GB`, bytes) in bytes."""
    m = re.fullmatch(r"(\d+)(|B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)", value)
    assert m, f"not a size: {value!r}"
    units = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    return int(m.group(1)) * units[m.group(2)]


def read_env_file(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k] = v
    return out


# --------------------------------------------------------------------------- perch's own settings


@pytest.fixture(scope="module")
def perch_help(perch_bin):
    return run([perch_bin, "serve", "--help"], check=True).stdout


@pytest.fixture(scope="module")
def perch_env_names(perch_help):
    """Every PERCH_* variable perch reads: those in `perch serve --help`, plus the log level,
    which docs/configuration.md documents."""
    names = set(re.findall(r"\bPERCH_[A-Z_]+[A-Z]\b", perch_help))
    assert {"PERCH_LISTEN", "PERCH_ACCESS_KEY_ID", "PERCH_ORIGIN_SECRET_ACCESS_KEY"} <= names, names
    assert "`PERCH_LOG`" in (REPO / "docs/configuration.md").read_text()
    return names | {"PERCH_LOG"}


@pytest.fixture(scope="module")
def perch_commands(perch_bin):
    """`perch --help`'s commands, each with its own `--help`."""
    top = run([perch_bin, "--help"], check=True).stdout
    names = [n for n in re.findall(r"^  ([a-z]+)\s{2,}", top, re.M) if n != "help"]
    assert {"serve", "status", "flush"} <= set(names), top
    return {n: run([perch_bin, n, "--help"], check=True).stdout for n in names}


def check_perch_env(names, env, where):
    unknown = sorted(k for k in env if k.startswith("PERCH_") and k not in names)
    assert not unknown, f"{where} sets {unknown}, which `perch serve --help` does not know"


def test_the_write_back_settings_are_perch_serve_settings(perch_env_names, perch_help):
    # The deployment files set these; perch must have them under these names.
    assert set(WRITE_BACK) <= perch_env_names, sorted(set(WRITE_BACK) - perch_env_names)
    for name in WRITE_BACK:
        assert "--" + name.removeprefix("PERCH_").lower().replace("_", "-") in perch_help, name


class RunningPerch:
    def __init__(self, proc, s3_port, admin_port, log):
        self.proc, self.s3_port, self.admin_port, self.log = proc, s3_port, admin_port, log

    def client(self, key, secret):
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.s3_port}",
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_perch(perch_bin, workdir, env_extra):
    """`perch serve` with the given environment (listeners on free ports unless given)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "perch.log"
    env = clean_env(PERCH_LISTEN="127.0.0.1:0", PERCH_ADMIN_LISTEN="127.0.0.1:0", PERCH_DATA_DIR=str(workdir / "data"))
    env.update(env_extra)
    with open(log, "wb") as err:
        proc = subprocess.Popen([perch_bin, "serve"], stdout=subprocess.PIPE, stderr=err, env=env,
                                start_new_session=True)
    line = {}
    t = threading.Thread(target=lambda: line.setdefault("v", proc.stdout.readline().decode()), daemon=True)
    t.start()
    t.join(20)
    first = line.get("v", "")
    if not first.startswith("listening "):
        proc.kill()
        proc.wait()
        pytest.fail(f"perch did not start with {sorted(env_extra)}: {first!r}\n{tail(log)}", pytrace=False)
    fields = dict(p.split("=", 1) for p in first.split()[1:])
    return RunningPerch(proc, int(fields["s3"].rsplit(":", 1)[1]), int(fields["admin"].rsplit(":", 1)[1]), log)


def perch_accepts(perch_bin, tmp_path, name, env):
    """Starts perch with `env` (listeners and data dir moved to the test's), then stops it."""
    env = {k: v for k, v in env.items() if k.startswith(("PERCH_", "AWS_"))}
    env.update(PERCH_LISTEN="127.0.0.1:0", PERCH_ADMIN_LISTEN="127.0.0.1:0", PERCH_DATA_DIR=str(tmp_path / name))
    p = start_perch(perch_bin, tmp_path / f"{name}-run", env)
    assert requests.get(f"http://127.0.0.1:{p.admin_port}/healthz", timeout=5).status_code == 200
    # perch installs its SIGTERM handler just after printing its listening line: give it a moment.
    time.sleep(0.5)
    p.stop()
    assert p.proc.returncode == 0, tail(p.log)


# --------------------------------------------------------------------------- shellcheck


def shell_scripts():
    skip = {".git", "target", "perch-data", "node_modules", ".pytest_cache", "__pycache__"}
    found = []
    for dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            path = Path(dirpath) / name
            if path.suffix == ".sh":
                found.append(path)
                continue
            try:
                with open(path, "rb") as f:
                    first = f.readline(200)
            except OSError:
                continue
            if re.match(rb"#!\s*(/usr/bin/env\s+)?(/bin/|/usr/bin/)?(ba)?sh\b", first):
                found.append(path)
    return sorted(found)


def test_every_shell_script_passes_shellcheck():
    exe = need("shellcheck", "shellcheck")
    scripts = shell_scripts()
    names = {str(p.relative_to(REPO)) for p in scripts}
    assert {"oriole-image/entrypoint.sh", "oriole-image/render-config.sh", "oriole-image/install.sh",
            "fly/supervise.sh", "test.sh", ".ci/run"} <= names, names
    r = run([exe, "--severity=style", *map(str, scripts)], cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- render-config.sh


SAMPLE_ENV = read_env_file(ORIOLE / "testdata/sample.env")
SECRET = SAMPLE_ENV["PERCH_SECRET_ACCESS_KEY"]


def render(tmp_path, env, out=True):
    target = tmp_path / f"rendered-{uuid.uuid4().hex[:6]}.conf"
    cmd = ["bash", str(ORIOLE / "render-config.sh"), str(target) if out else "--check"]
    r = run(cmd, env=base_env(**env))
    assert SECRET not in r.stdout + r.stderr, "render-config.sh printed the secret"
    return r, target


def test_render_config_matches_the_sample(tmp_path):
    r, target = render(tmp_path, SAMPLE_ENV)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert target.read_text() == (ORIOLE / "testdata/expected-perch-s3.conf").read_text()
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert "bucket orioledb" in r.stderr and "localhost:9000" in r.stderr


def test_render_config_defaults_and_check_mode(tmp_path):
    env = {k: v for k, v in SAMPLE_ENV.items() if k not in ("ORIOLE_S3_REGION", "ORIOLE_S3_DESIRED_SIZE")}
    r, target = render(tmp_path, env)
    assert r.returncode == 0, r.stderr
    text = target.read_text()
    assert "orioledb.s3_region = 'us-east-1'" in text
    assert "s3_desired_size" not in text
    r, target = render(tmp_path, SAMPLE_ENV, out=False)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert not target.exists()


@pytest.mark.parametrize("missing", ["ORIOLE_S3_ENDPOINT", "ORIOLE_S3_BUCKET", "PERCH_ACCESS_KEY_ID",
                                     "PERCH_SECRET_ACCESS_KEY", "PGDATA"])
def test_render_config_names_a_missing_variable(tmp_path, missing):
    for env in ({k: v for k, v in SAMPLE_ENV.items() if k != missing}, {**SAMPLE_ENV, missing: ""}):
        r, target = render(tmp_path, env)
        assert r.returncode == 1
        assert f"error: {missing} is not set" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not target.exists()
        assert not list(tmp_path.glob("rendered-*")), "a partial file was left behind"


@pytest.mark.parametrize("name,value,expect", [
    ("ORIOLE_S3_ENDPOINT", "http://localhost:9000", "without a scheme"),
    ("ORIOLE_S3_ENDPOINT", "localhost", "must be host:port"),
    ("ORIOLE_S3_ENDPOINT", "localhost:99999", "must be host:port"),
    ("ORIOLE_S3_ENDPOINT", "127.0.0.1:9000", "without dots"),
    ("ORIOLE_S3_ENDPOINT", "perch.internal:9000", "without dots"),
    ("ORIOLE_S3_BUCKET", "Not_A_Bucket", "bucket name"),
    ("ORIOLE_S3_DESIRED_SIZE", "6 gigs", "6GB"),
    ("ORIOLE_S3_REGION", "us east", "region"),
    ("PGDATA", "relative/dir", "absolute"),
    ("PERCH_SECRET_ACCESS_KEY", "two\nlines", "control character"),
])
def test_render_config_rejects_malformed_values(tmp_path, name, value, expect):
    r, target = render(tmp_path, {**SAMPLE_ENV, name: value})
    assert r.returncode == 1
    assert name in r.stderr and expect in r.stderr, r.stderr
    assert "two\nlines" not in r.stderr
    assert not target.exists()


def test_render_config_reports_every_problem_at_once(tmp_path):
    r, _ = render(tmp_path, {"ORIOLE_S3_ENDPOINT": "10.0.0.1:9000", "PGDATA": "/x"})
    assert r.returncode == 1
    for name in ("ORIOLE_S3_BUCKET", "PERCH_ACCESS_KEY_ID", "PERCH_SECRET_ACCESS_KEY", "ORIOLE_S3_ENDPOINT"):
        assert name in r.stderr, r.stderr


# --------------------------------------------------------------------------- build-time pieces


# --------------------------------------------------------------------------- the entrypoint, with a real perch


KEY = "oriole-test"
KEY_SECRET = "entrypoint-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def keyed_perch(perch_bin, tmp_path_factory):
    p = start_perch(perch_bin, tmp_path_factory.mktemp("perch"),
                    {"PERCH_ACCESS_KEY_ID": KEY, "PERCH_SECRET_ACCESS_KEY": KEY_SECRET})
    yield p
    p.stop()


FAKE_LOADER = """\
import json, os, sys
args = sys.argv[1:]
data_dir = args[args.index("--data-dir") + 1]
record = {
    "argv": args,
    "cwd": os.getcwd(),
    "env": {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_SESSION_TOKEN", "AWS_REGION", "PG_BIN", "AWS_PROFILE")},
}
with open(os.environ["FAKE_LOADER_LOG"], "a") as f:
    f.write(json.dumps(record) + "\\n")
mode = os.environ.get("FAKE_LOADER_MODE", "ok")
if mode == "fail":
    open("half-restored", "w").write("x")
    print("fake loader: boom", file=sys.stderr)
    sys.exit(1)
if mode == "ok":
    for name, body in (("PG_VERSION", "17\\n"), ("global/pg_control", "c"), ("orioledb_data/control", "o")):
        os.makedirs(os.path.dirname(os.path.join(data_dir, name)), exist_ok=True)
        open(os.path.join(data_dir, name), "w").write(body)
"""

FAKE_UPSTREAM = """\
#!/usr/bin/env bash
printf 'upstream called:'; printf ' %s' "$@"; echo
[ -s "$PGDATA/PG_VERSION" ] && echo "upstream sees a database" || echo "upstream sees no database"
"""


class Oriole:
    """The entrypoint wired to the test's perch, tools and fakes."""

    def __init__(self, tmp_path, perch):
        self.root = tmp_path
        self.tools = tmp_path / "tools"
        (self.tools / "venv/bin").mkdir(parents=True)
        py = self.tools / "venv/bin/python3"
        py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        py.chmod(0o755)
        (self.tools / "oriole_s3.py").symlink_to(ORIOLE / "oriole_s3.py")
        (self.tools / "render-config.sh").symlink_to(ORIOLE / "render-config.sh")
        (self.tools / "restore.py").write_text(FAKE_LOADER)
        self.upstream = tmp_path / "docker-entrypoint.sh"
        self.upstream.write_text(FAKE_UPSTREAM)
        self.upstream.chmod(0o755)
        self.loader_log = tmp_path / "loader.jsonl"
        self.conf = tmp_path / "etc/perch-s3.conf"
        self.conf.parent.mkdir()
        self.pgdata = tmp_path / "volume/pgdata"
        self.pgdata.parent.mkdir()
        self.bucket = f"db-{uuid.uuid4().hex[:12]}"
        self.perch = perch
        self.outputs = []

    def env(self, **extra):
        env = base_env(
            ORIOLE_S3_ENDPOINT=f"localhost:{self.perch.s3_port}",
            ORIOLE_S3_BUCKET=self.bucket,
            PERCH_ACCESS_KEY_ID=KEY,
            PERCH_SECRET_ACCESS_KEY=KEY_SECRET,
            PGDATA=str(self.pgdata),
            ORIOLE_RUN_AS="",
            ORIOLE_TOOLS_DIR=str(self.tools),
            ORIOLE_CONF_FILE=str(self.conf),
            ORIOLE_UPSTREAM_ENTRYPOINT=str(self.upstream),
            ORIOLE_S3_WAIT="10",
            FAKE_LOADER_LOG=str(self.loader_log),
            # Ambient AWS settings must not reach the restore tool.
            AWS_PROFILE="someone-elses",
            AWS_SESSION_TOKEN="someone-elses-token",
            AWS_REGION="eu-west-3",
        )
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def run(self, *args, **extra):
        args = args or ("postgres", "-D", "/etc/postgresql")
        r = run(["bash", str(ORIOLE / "entrypoint.sh"), *args], env=self.env(**extra), timeout=60)
        self.outputs.append(r.stdout + r.stderr)
        assert KEY_SECRET not in r.stdout + r.stderr, "the entrypoint printed Perch's secret key"
        return r

    def loader_calls(self):
        if not self.loader_log.exists():
            return []
        return [json.loads(line) for line in self.loader_log.read_text().splitlines()]

    def s3(self):
        return self.perch.client(KEY, KEY_SECRET)


@pytest.fixture
def oriole(tmp_path, keyed_perch):
    return Oriole(tmp_path, keyed_perch)


def test_entrypoint_runs_other_commands_as_given(oriole):
    r = run(["bash", str(ORIOLE / "entrypoint.sh"), "echo", "hello"], env=base_env())
    assert r.returncode == 0 and r.stdout == "hello\n"
    # Options alone are the server's (as with the upstream image): the environment is checked.
    r = run(["bash", str(ORIOLE / "entrypoint.sh"), "-c", "work_mem=64MB"],
            env=base_env(ORIOLE_TOOLS_DIR=str(ORIOLE)))
    assert r.returncode == 1 and "ORIOLE_S3_ENDPOINT is not set" in r.stderr, r.stderr


def test_entrypoint_initializes_a_new_database_in_a_new_bucket(oriole):
    r = oriole.run(ORIOLE_CREATE_BUCKET="true")
    assert r.returncode == 0, r.stderr
    assert "upstream called: postgres -D /etc/postgresql" in r.stdout
    assert "initializing a new database in the new bucket" in r.stderr
    assert oriole.loader_calls() == []
    oriole.s3().head_bucket(Bucket=oriole.bucket)
    conf = oriole.conf.read_text()
    assert f"orioledb.s3_prefix = '{oriole.bucket}'" in conf
    assert f"orioledb.s3_host = 'localhost:{oriole.perch.s3_port}'" in conf
    assert f"data_directory = '{oriole.pgdata}'" in conf
    assert oct(oriole.conf.stat().st_mode & 0o777) == "0o600"

    # An existing, empty bucket: initdb as well.
    r = oriole.run()
    assert r.returncode == 0 and "are both empty: initializing a new database" in r.stderr, r.stderr


def test_entrypoint_refuses_a_missing_bucket_unless_asked_to_create_it(oriole):
    r = oriole.run()
    assert r.returncode == 1
    assert f"bucket {oriole.bucket} does not exist" in r.stderr and "ORIOLE_CREATE_BUCKET" in r.stderr
    assert "upstream called" not in r.stdout


def test_entrypoint_restores_from_the_bucket_instead_of_initdb(oriole):
    s3 = oriole.s3()
    s3.create_bucket(Bucket=oriole.bucket)
    s3.put_object(Bucket=oriole.bucket, Key="data/1/global/pg_control", Body=b"c")
    r = oriole.run()
    assert r.returncode == 0, r.stderr
    assert "is empty and bucket" in r.stderr and "restoring it with the restore tool" in r.stderr
    assert "restored the database" in r.stderr
    assert "upstream sees a database" in r.stdout
    [call] = oriole.loader_calls()
    assert call["argv"] == ["--endpoint", f"http://localhost:{oriole.perch.s3_port}", "--bucket", oriole.bucket,
                            "--data-dir", str(oriole.pgdata)]
    assert call["cwd"] == str(oriole.pgdata)
    assert call["env"]["AWS_ACCESS_KEY_ID"] == KEY and call["env"]["AWS_SECRET_ACCESS_KEY"] == KEY_SECRET
    assert call["env"]["AWS_PROFILE"] is None
    assert call["env"]["AWS_SESSION_TOKEN"] is None and call["env"]["AWS_REGION"] is None
    assert call["env"]["AWS_DEFAULT_REGION"] == "us-east-1"
    assert call["env"]["PG_BIN"]
    assert not (oriole.pgdata / ".perch-restore-in-progress").exists()
    # No pg_hba.conf came from the bucket: the default one was written, and said so.
    assert "no pg_hba.conf" in r.stderr
    assert (oriole.pgdata / "pg_hba.conf").read_text().startswith("local all all trust")

    # The next start finds the database and does not restore again.
    r = oriole.run()
    assert r.returncode == 0 and "holds a database: starting it" in r.stderr
    assert len(oriole.loader_calls()) == 1


def test_entrypoint_restarts_an_interrupted_restore(oriole):
    s3 = oriole.s3()
    s3.create_bucket(Bucket=oriole.bucket)
    s3.put_object(Bucket=oriole.bucket, Key="data/1/global/pg_control", Body=b"c")
    r = oriole.run(FAKE_LOADER_MODE="fail")
    assert r.returncode == 1
    assert "fake loader: boom" in r.stderr and "the restore from bucket" in r.stderr
    assert "upstream called" not in r.stdout
    assert (oriole.pgdata / ".perch-restore-in-progress").exists()

    r = oriole.run()
    assert r.returncode == 0, r.stderr
    assert "did not finish: clearing what it wrote" in r.stderr
    assert not (oriole.pgdata / "half-restored").exists()
    assert "upstream sees a database" in r.stdout
    assert len(oriole.loader_calls()) == 2


def test_entrypoint_refuses_an_incomplete_restore(oriole):
    s3 = oriole.s3()
    s3.create_bucket(Bucket=oriole.bucket)
    s3.put_object(Bucket=oriole.bucket, Key="wal/000000010000000000000001", Body=b"w")
    r = oriole.run(FAKE_LOADER_MODE="nothing")
    assert r.returncode == 1
    assert "holds no complete checkpoint; refusing to start" in r.stderr
    assert "upstream called" not in r.stdout


def test_entrypoint_refuses_a_data_directory_it_does_not_understand(oriole):
    oriole.pgdata.mkdir()
    (oriole.pgdata / "stray").write_text("x")
    r = oriole.run(ORIOLE_CREATE_BUCKET="true")
    assert r.returncode == 1 and "neither empty nor a database" in r.stderr
    assert (oriole.pgdata / "stray").exists()


def test_entrypoint_refuses_a_database_whose_bucket_is_gone(oriole):
    oriole.pgdata.mkdir()
    (oriole.pgdata / "PG_VERSION").write_text("17\n")
    r = oriole.run(ORIOLE_CREATE_BUCKET="true")
    assert r.returncode == 1 and "holds a database but bucket" in r.stderr and "does not exist" in r.stderr
    assert "upstream called" not in r.stdout
    oriole.s3().create_bucket(Bucket=oriole.bucket)
    r = oriole.run()
    assert r.returncode == 1 and "is empty: this database is not in that bucket" in r.stderr
    assert "upstream called" not in r.stdout


def test_entrypoint_names_missing_settings_and_wrong_keys(oriole):
    r = oriole.run(ORIOLE_S3_BUCKET=None)
    assert r.returncode == 1 and "ORIOLE_S3_BUCKET is not set" in r.stderr
    r = oriole.run(PERCH_SECRET_ACCESS_KEY="not-the-secret")
    assert r.returncode == 1 and "Perch refused" in r.stderr
    r = oriole.run(ORIOLE_S3_ENDPOINT=f"localhost:{free_port()}", ORIOLE_S3_WAIT="1")
    assert r.returncode == 1 and "is not answering" in r.stderr


def put_lock(s3, bucket, identifier):
    s3.put_object(Bucket=bucket, Key="data/orioledb_data/s3_lock", Body=struct.pack("<Q", identifier))


def bucket_lock(s3, bucket):
    try:
        return struct.unpack("<Q", s3.get_object(Bucket=bucket, Key="data/orioledb_data/s3_lock")["Body"].read())[0]
    except s3.exceptions.NoSuchKey:
        return None


def test_a_stale_lock_is_broken_only_when_asked_with_its_identifier(oriole):
    s3 = oriole.s3()
    s3.create_bucket(Bucket=oriole.bucket)
    s3.put_object(Bucket=oriole.bucket, Key="data/1/global/pg_control", Body=b"c")
    (oriole.pgdata / "orioledb_data").mkdir(parents=True)
    (oriole.pgdata / "PG_VERSION").write_text("17\n")
    (oriole.pgdata / "orioledb_data/s3_lock").write_bytes(struct.pack("<Q", 999))
    stale = 7_312_345_678_901_234_567
    put_lock(s3, oriole.bucket, stale)

    # Without a request the entrypoint leaves the lock alone (OrioleDB itself then refuses to start).
    r = oriole.run()
    assert r.returncode == 0 and bucket_lock(s3, oriole.bucket) == stale

    # `oriole-s3 lock show` gives both identifiers.
    r = run([sys.executable, str(ORIOLE / "oriole_s3.py"), "lock", "show", "--local",
             str(oriole.pgdata / "orioledb_data/s3_lock")], env=oriole.env())
    assert r.returncode == 0 and f"bucket lock: {stale}" in r.stdout and "local lock:  999" in r.stdout

    # A wrong identifier: refused, nothing deleted, the server is not started.
    r = oriole.run(ORIOLE_BREAK_S3_LOCK="12345")
    assert r.returncode == 1 and f"it holds {stale}, not 12345" in r.stderr
    assert bucket_lock(s3, oriole.bucket) == stale and "upstream called" not in r.stdout
    r = oriole.run(ORIOLE_BREAK_S3_LOCK="abc")
    assert r.returncode == 1 and "decimal number" in r.stderr

    # The right one: broken, said, and the server starts.
    r = oriole.run(ORIOLE_BREAK_S3_LOCK=str(stale))
    assert r.returncode == 0, r.stderr
    assert f"broke the OrioleDB lock {stale}" in r.stderr and "upstream called" in r.stdout
    assert bucket_lock(s3, oriole.bucket) is None

    # Left set after the instance took its own lock: nothing is broken, and it says to unset it.
    put_lock(s3, oriole.bucket, 999)
    r = oriole.run(ORIOLE_BREAK_S3_LOCK=str(stale))
    assert r.returncode == 0 and "this data directory's own" in r.stderr
    assert bucket_lock(s3, oriole.bucket) == 999


def test_oriole_s3_lists_what_landed_in_the_bucket(oriole):
    s3 = oriole.s3()
    s3.create_bucket(Bucket=oriole.bucket)
    for key, size in (("data/1/base/1/1247", 100), ("data/1/global/pg_control", 8), ("wal/0001", 50)):
        s3.put_object(Bucket=oriole.bucket, Key=key, Body=b"x" * size)
    r = run([sys.executable, str(ORIOLE / "oriole_s3.py"), "ls"], env=oriole.env())
    assert r.returncode == 0, r.stderr
    assert re.search(r"2 objects\s+108 bytes\s+data/", r.stdout), r.stdout
    assert re.search(r"1 objects\s+50 bytes\s+wal/", r.stdout), r.stdout
    assert re.search(rf"3 objects\s+158 bytes\s+total in s3://{oriole.bucket}/", r.stdout), r.stdout
    r = run([sys.executable, str(ORIOLE / "oriole_s3.py"), "probe"], env=oriole.env())
    assert r.stdout == "has-data\n"


# --------------------------------------------------------------------------- the Fly supervisor

FAKE_ORIOLE = """\
#!/usr/bin/env bash
w() { echo "oriole $*" >>"$FAKE_LOG"; }
env | cut -d= -f1 | sort >"$FAKE_ORIOLE_ENV"
printf '%s\\n' "$ORIOLE_S3_BUCKET" >"$FAKE_ORIOLE_ENV.bucket"
w "start $*"
on_int() {
    if [ "${FAKE_ORIOLE_MODE:-}" = ignore-int ]; then w "ignoring INT"; return; fi
    w "got INT, perch health $(curl -s -o /dev/null -w '%{http_code}' "$FAKE_ADMIN/healthz")"
    sleep 1
    w "exit 0"
    exit 0
}
trap on_int INT
trap 'w "got QUIT"; exit 3' QUIT
if [ "${FAKE_ORIOLE_MODE:-}" = exit3 ]; then sleep 0.5; w "exit 3"; exit 3; fi
while :; do sleep 0.1; done
"""

FAKE_PERCH = """\
import http.server, os, signal, sys, threading
host, port = os.environ["PERCH_ADMIN_LISTEN"].rsplit(":", 1)
def w(m):
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(f"perch {m}\\n")
with open(os.environ["FAKE_PERCH_ENV"], "w") as f:
    f.write("\\n".join(sorted(os.environ)) + "\\n")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok\\n")
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((host, int(port)), H)
def term(s, f):
    w("got TERM")
    threading.Thread(target=srv.shutdown).start()
signal.signal(signal.SIGTERM, term)
if os.environ.get("FAKE_PERCH_DIE_AFTER"):
    threading.Timer(float(os.environ["FAKE_PERCH_DIE_AFTER"]), lambda: (w("dies"), os._exit(7))).start()
w("serving " + " ".join(sys.argv[1:]))
srv.serve_forever()
w("exit 0")
"""


class Supervisor:
    def __init__(self, tmp_path, perch_bin=None, **extra):
        self.tmp = tmp_path
        self.log = tmp_path / "events.log"
        self.log.touch()
        self.admin_port = free_port()
        oriole = tmp_path / "fake-oriole"
        oriole.write_text(FAKE_ORIOLE)
        oriole.chmod(0o755)
        if perch_bin is None:
            perch_bin = tmp_path / "fake-perch"
            perch_bin.write_text(f"#!{sys.executable}\n" + FAKE_PERCH)
            perch_bin.chmod(0o755)
        self.env = base_env(
            SUPERVISE_PERCH_BIN=str(perch_bin),
            SUPERVISE_ORIOLE_ENTRYPOINT=str(oriole),
            SUPERVISE_PERCH_USER="",
            SUPERVISE_PERCH_READY_TIMEOUT="20",
            SUPERVISE_POSTGRES_STOP_TIMEOUT="20",
            SUPERVISE_PERCH_STOP_TIMEOUT="20",
            PERCH_LISTEN=f"127.0.0.1:{free_port()}",
            PERCH_ADMIN_LISTEN=f"127.0.0.1:{self.admin_port}",
            PERCH_DATA_DIR=str(tmp_path / "perch-data"),
            PERCH_ACCESS_KEY_ID="sup-key",
            PERCH_SECRET_ACCESS_KEY="sup-secret",
            PERCH_ADMIN_TOKEN="sup-admin-token-0123456789",
            AWS_ACCESS_KEY_ID="tigris-key",
            AWS_SECRET_ACCESS_KEY="tigris-secret",
            POSTGRES_PASSWORD="pg-password",
            BUCKET_NAME="from-fly-storage",
            PGDATA=str(tmp_path / "pgdata"),
            FAKE_LOG=str(self.log),
            FAKE_ADMIN=f"http://127.0.0.1:{self.admin_port}",
            FAKE_ORIOLE_ENV=str(tmp_path / "oriole.env"),
            FAKE_PERCH_ENV=str(tmp_path / "perch.env"),
        )
        self.env.update(extra)
        self.stderr = tmp_path / "supervise.stderr"
        # Started with SIGINT and SIGQUIT at their defaults, as a Machine's init starts it: a test
        # run started in the background of a shell without job control inherits them ignored,
        # and bash cannot trap a signal ignored at its entry (the stop by SIGINT would hang).
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(["env", "--default-signal=INT,QUIT", "bash", str(FLY / "supervise.sh")],
                                         stdout=subprocess.DEVNULL, stderr=err, env=self.env,
                                         start_new_session=True)

    def events(self):
        return self.log.read_text().splitlines()

    def wait_for(self, text, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in e for e in self.events()):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"no {text!r} in {self.events()}\nsupervisor:\n{self.stderr.read_text()}", pytrace=False)

    def wait(self, timeout=60):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"the supervisor did not exit:\n{self.stderr.read_text()}", pytrace=False)

    def said(self):
        return self.stderr.read_text()

    def status(self):
        auth = {"Authorization": f"Bearer {self.env['PERCH_ADMIN_TOKEN']}"}
        return requests.get(f"http://127.0.0.1:{self.admin_port}/status", headers=auth, timeout=5).json()


def index_of(lines, text):
    for i, line in enumerate(lines):
        if text in line:
            return i
    raise AssertionError(f"{text!r} not in {lines}")


def test_supervisor_stops_oriole_first_then_the_real_perch(tmp_path, perch_bin):
    sup = Supervisor(tmp_path, perch_bin=perch_bin)
    sup.wait_for("oriole start postgres -D /etc/postgresql")
    assert requests.get(f"http://127.0.0.1:{sup.admin_port}/readyz", timeout=5).status_code == 200
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.wait() == 0, sup.said()
    events = sup.events()
    # OrioleDB got SIGINT while Perch was still serving, and finished before Perch was asked to stop.
    assert "oriole got INT, perch health 200" in events, events
    said = sup.said()
    order = [index_of(said.splitlines(), t) for t in (
        "got SIGTERM", "OrioleDB: SIGINT", "OrioleDB stopped (status 0)", "Perch: SIGTERM",
        "Perch stopped (status 0)", "stopped cleanly")]
    assert order == sorted(order), said
    assert "perch is serving" in said.replace('"', "")  # the real perch's log line
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{sup.admin_port}/healthz", timeout=2)


def test_supervisor_keeps_the_origin_keys_from_oriole_and_postgres_settings_from_perch(tmp_path):
    sup = Supervisor(tmp_path)
    sup.wait_for("oriole start")
    sup.proc.send_signal(signal.SIGINT)
    assert sup.wait() == 0, sup.said()
    oriole_env = set((tmp_path / "oriole.env").read_text().split())
    perch_env = set((tmp_path / "perch.env").read_text().split())
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PERCH_ADMIN_TOKEN"}.isdisjoint(oriole_env), oriole_env
    assert {"PERCH_ACCESS_KEY_ID", "PERCH_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD", "PGDATA"} <= oriole_env
    assert {"POSTGRES_PASSWORD", "PGDATA"}.isdisjoint(perch_env), perch_env
    assert {"AWS_ACCESS_KEY_ID", "PERCH_ACCESS_KEY_ID", "PERCH_ADMIN_TOKEN"} <= perch_env
    assert (tmp_path / "oriole.env.bucket").read_text() == "from-fly-storage\n"
    events = sup.events()
    assert index_of(events, "oriole exit 0") < index_of(events, "perch got TERM") < index_of(events, "perch exit 0")
    for secret in ("sup-secret", "tigris-secret", "pg-password", "sup-admin-token-0123456789"):
        assert secret not in sup.said()


def test_supervisor_escalates_when_postgres_does_not_stop(tmp_path):
    sup = Supervisor(tmp_path, FAKE_ORIOLE_MODE="ignore-int", SUPERVISE_POSTGRES_STOP_TIMEOUT="1")
    sup.wait_for("oriole start")
    started = time.monotonic()
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.wait() == 1
    assert time.monotonic() - started < 15
    events = sup.events()
    assert index_of(events, "oriole ignoring INT") < index_of(events, "oriole got QUIT") < index_of(events, "perch got TERM")
    assert "did not stop within 1 s: SIGQUIT" in sup.said()


def test_supervisor_stops_perch_when_oriole_exits(tmp_path):
    sup = Supervisor(tmp_path, FAKE_ORIOLE_MODE="exit3")
    assert sup.wait() == 3, sup.said()
    events = sup.events()
    assert index_of(events, "oriole exit 3") < index_of(events, "perch got TERM")
    assert "OrioleDB exited on its own with status 3" in sup.said()


def test_supervisor_stops_oriole_at_once_when_perch_dies(tmp_path):
    sup = Supervisor(tmp_path, FAKE_PERCH_DIE_AFTER="2")
    assert sup.wait() == 1, sup.said()
    events = sup.events()
    assert index_of(events, "perch dies") < index_of(events, "oriole got QUIT")
    assert "Perch exited on its own with status 7" in sup.said()


def test_supervisor_gives_up_when_perch_never_gets_ready(tmp_path):
    sup = Supervisor(tmp_path, SUPERVISE_PERCH_BIN="/bin/false")
    assert sup.wait() == 1
    assert "Perch exited with status 1 before it was ready" in sup.said()
    assert not (tmp_path / "oriole.env").exists()


class OriginProxy:
    """An origin in front of moto whose uploads can be refused with 503 SlowDown: an outage as
    Perch's uploader sees it (retried until it ends). Reads, listings and HEADs pass through, so
    /readyz answers 200 and the supervisor starts OrioleDB."""

    def __init__(self, upstream_port):
        self.failing = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def forward(self):
                data = self.body()
                if proxy.failing.is_set() and self.command in ("PUT", "POST", "DELETE"):
                    msg = b"<Error><Code>SlowDown</Code><Message>test outage</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                skip = ("transfer-encoding", "content-length", "connection")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=data, headers=headers)
                    r = conn.getresponse()
                    payload = r.read()
                finally:
                    conn.close()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in skip + ("server", "date"):
                        self.send_header(k, v)
                length = r.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(payload))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin_proxy(moto):
    proxy = OriginProxy(moto.port)
    yield proxy
    proxy.close()


def write_back_supervisor(tmp_path, perch_bin, moto, proxy, drain_timeout, perch_budget):
    """The supervisor with the real perch in front of `proxy`, and one write acknowledged by Perch
    while the origin refuses uploads. Returns (supervisor, bucket, key, body, origin settings)."""
    bucket = f"drain-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=bucket)
    origin = {"PERCH_ORIGIN": proxy.url, "PERCH_ORIGIN_REGION": REGION,
              "PERCH_ORIGIN_ACCESS_KEY_ID": "testing", "PERCH_ORIGIN_SECRET_ACCESS_KEY": "testing"}
    sup = Supervisor(tmp_path, perch_bin=perch_bin, **origin, PERCH_DRAIN_TIMEOUT=drain_timeout,
                     PERCH_DRAIN_QUIET="1s", SUPERVISE_PERCH_STOP_TIMEOUT=str(perch_budget))
    sup.wait_for("oriole start")
    proxy.failing.set()
    s3 = boto3.client("s3", endpoint_url=f"http://{sup.env['PERCH_LISTEN']}", region_name=REGION,
                      aws_access_key_id="sup-key", aws_secret_access_key="sup-secret",
                      config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    key, body = "data/1/base/1/1247", os.urandom(3000)
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    # Acknowledged, not uploaded: the origin's fault is being retried.
    deadline = time.monotonic() + 10
    while True:
        status = sup.status()
        if status["dirty_objects"] == 1 and status["origin_fault"]:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return sup, bucket, key, body, origin


def in_origin(moto, bucket, key):
    try:
        return moto.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except moto.client().exceptions.NoSuchKey:
        return None


def test_supervisor_lets_perch_drain_its_journal_before_it_exits(tmp_path, perch_bin, moto, origin_proxy):
    sup, bucket, key, body, _ = write_back_supervisor(tmp_path, perch_bin, moto, origin_proxy, "30s", 40)
    sup.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while "Perch: SIGTERM" not in sup.said():
        assert time.monotonic() < deadline and sup.proc.poll() is None, sup.said()
        time.sleep(0.1)
    # OrioleDB is gone; Perch keeps serving and holds the write until the origin takes it.
    time.sleep(1.5)
    assert sup.proc.poll() is None, sup.said()
    assert sup.status()["dirty_objects"] == 1
    assert in_origin(moto, bucket, key) is None
    origin_proxy.failing.clear()
    assert sup.wait() == 0, sup.said()
    assert in_origin(moto, bucket, key) == body
    said = sup.said()
    assert "journal drained" in said and "Perch stopped (status 0)" in said and "SIGKILL" not in said, said


def test_a_drain_cut_short_leaves_the_journal_for_the_next_start(tmp_path, perch_bin, moto, origin_proxy):
    sup, bucket, key, body, origin = write_back_supervisor(tmp_path, perch_bin, moto, origin_proxy, "2s", 10)
    started = time.monotonic()
    sup.proc.send_signal(signal.SIGTERM)
    # Perch gives up at its drain timeout and exits 0 on its own, inside the supervisor's budget.
    assert sup.wait() == 0, sup.said()
    assert time.monotonic() - started < 10
    said = sup.said()
    assert "--drain-timeout reached" in said and "Perch stopped (status 0)" in said and "SIGKILL" not in said, said
    assert in_origin(moto, bucket, key) is None

    # The next start on the same data dir uploads it; `perch flush` waits for that.
    origin_proxy.failing.clear()
    p = start_perch(perch_bin, tmp_path / "next-start", {"PERCH_DATA_DIR": sup.env["PERCH_DATA_DIR"], **origin})
    try:
        r = run([perch_bin, "flush", "--admin", f"127.0.0.1:{p.admin_port}", "--timeout", "30s"],
                env=clean_env(), timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert in_origin(moto, bucket, key) == body
        r = run([perch_bin, "status", "--admin", f"127.0.0.1:{p.admin_port}"], env=clean_env())
        assert r.returncode == 0 and "backlog: 0 objects" in r.stdout, r.stdout + r.stderr
    finally:
        p.stop()


# --------------------------------------------------------------------------- compose


def compose_config(tmp_path, *files, env_overrides=None):
    exe = need("docker-compose", "docker-compose")
    env_file = tmp_path / f"env-{uuid.uuid4().hex[:6]}"
    values = read_env_file(COMPOSE / ".env.sample")
    values.update(env_overrides or {})
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    cmd = [exe, "--env-file", str(env_file)]
    for f in files:
        cmd += ["-f", str(COMPOSE / f)]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    quiet = run(cmd + ["config", "-q"], env=env, cwd=COMPOSE)
    full = run(cmd + ["config"], env=env, cwd=COMPOSE)
    return quiet, full


def test_compose_files_are_valid(tmp_path):
    quiet, full = compose_config(tmp_path, "docker-compose.yml")
    assert quiet.returncode == 0, quiet.stderr
    keys = {"PERCH_ORIGIN_ACCESS_KEY_ID": "tid", "PERCH_ORIGIN_SECRET_ACCESS_KEY": "tsecret"}
    quiet, full = compose_config(tmp_path, "docker-compose.yml", "docker-compose.tigris.yml", env_overrides=keys)
    assert quiet.returncode == 0, quiet.stderr
    cfg = yaml.safe_load(full.stdout)
    perch = cfg["services"]["perch"]["environment"]
    assert perch["PERCH_ORIGIN"].startswith("https://")
    assert perch["PERCH_ORIGIN_ACCESS_KEY_ID"] == "tid"
    assert cfg["services"]["oriole"]["environment"]["ORIOLE_CREATE_BUCKET"] == "false"
    # Without the Tigris keys the override says which one is missing.
    quiet, _ = compose_config(tmp_path, "docker-compose.yml", "docker-compose.tigris.yml")
    assert quiet.returncode != 0 and "set PERCH_ORIGIN_ACCESS_KEY_ID" in quiet.stderr
    # Without .env's secrets the base file says what to do.
    quiet, _ = compose_config(tmp_path, "docker-compose.yml", env_overrides={"POSTGRES_PASSWORD": ""})
    assert quiet.returncode != 0 and "set POSTGRES_PASSWORD in compose/.env" in quiet.stderr


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def test_compose_services_volumes_ports_and_environment_fit_together(tmp_path, perch_env_names, perch_bin):
    quiet, full = compose_config(tmp_path, "docker-compose.yml")
    assert quiet.returncode == 0, quiet.stderr
    cfg = yaml.safe_load(full.stdout)
    raw = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert set(cfg["services"]) == {"perch", "oriole", "replica"}
    perch, oriole = cfg["services"]["perch"], cfg["services"]["oriole"]
    penv, oenv = perch["environment"], oriole["environment"]

    # The replica (profile `replica`): a replica Perch beside a standby OrioleDB, reading the
    # primary's bucket through the primary's Perch; its admin port is beyond loopback, so it
    # needs the admin token like the primary's.
    replica = cfg["services"]["replica"]
    renv = replica["environment"]
    assert raw["services"]["replica"]["profiles"] == ["replica"]
    check_perch_env(perch_env_names, renv, "compose's replica service")
    assert renv["PERCH_ROLE"] == "replica" and renv["ORIOLE_STANDBY"] == "true"
    assert renv["PERCH_ORIGIN"] == f"http://perch:{port_of(penv['PERCH_LISTEN'])}"
    if not renv["PERCH_ADMIN_LISTEN"].startswith("127."):
        assert renv.get("PERCH_ADMIN_TOKEN"), "the replica's admin port is beyond loopback without a token"

    # Images: the build contexts and Dockerfiles exist.
    assert (Path(perch["build"]["context"]) / perch["build"]["dockerfile"]).resolve() == REPO / "deploy/perch.Dockerfile"
    assert Path(oriole["build"]["context"]).resolve() == ORIOLE

    # Perch: every variable is one perch knows; its data dir is the named volume.
    check_perch_env(perch_env_names, penv, "compose's perch service")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in perch["volumes"]}
    assert mounts[penv["PERCH_DATA_DIR"]] in cfg["volumes"]
    # Started first, stopped last: OrioleDB waits for /readyz on the admin port.
    assert oriole["depends_on"] == {"perch": {"condition": "service_healthy"}}
    test = " ".join(perch["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port_of(penv['PERCH_ADMIN_LISTEN'])}/readyz" in test
    assert perch["stop_signal"] == "SIGTERM" and oriole["stop_signal"] == "SIGINT"
    # Perch drains its journal, then finishes requests in flight for up to 30 s: its grace period
    # covers both. The drain's quiet period is short: OrioleDB has stopped by then.
    for name in WRITE_BACK:
        assert name in penv, f"compose's perch service does not set {name}"
    drain = seconds(penv["PERCH_DRAIN_TIMEOUT"])
    # The drain, then the requests in flight (30 s) and the lease's release (10 s): docs/configuration.md.
    assert seconds(perch["stop_grace_period"]) >= drain + 40, (perch["stop_grace_period"], drain)
    assert seconds(penv["PERCH_DRAIN_QUIET"]) <= 5
    assert seconds(oriole["stop_grace_period"]) >= 120
    assert size_bytes(penv["PERCH_DIRTY_BYTES_MAX"]) <= size_bytes(penv["PERCH_CACHE_DISK_BYTES"])

    # OrioleDB reaches Perch by service name on its S3 port, signs with the same keys, and keeps
    # PGDATA inside its named volume.
    assert oenv["ORIOLE_S3_ENDPOINT"] == f"perch:{port_of(penv['PERCH_LISTEN'])}"
    for k in ("PERCH_ACCESS_KEY_ID", "PERCH_SECRET_ACCESS_KEY"):
        assert raw["services"]["oriole"]["environment"][k] == raw["services"]["perch"]["environment"][k]
    [pg_volume] = oriole["volumes"]
    source, target = pg_volume.split(":")[:2]
    assert source in cfg["volumes"] and oenv["PGDATA"].startswith(target.rstrip("/") + "/")
    assert oenv["ORIOLE_CREATE_BUCKET"] == "true"

    # Published on loopback only, onto the right container ports.
    published = {int(p.split(":")[2].split("/")[0]): p.split(":")[0] for p in perch["ports"] + oriole["ports"]}
    assert published == {port_of(penv["PERCH_LISTEN"]): "127.0.0.1", port_of(penv["PERCH_ADMIN_LISTEN"]): "127.0.0.1",
                         5432: "127.0.0.1"}

    # The entrypoint accepts OrioleDB's environment, and perch accepts its own.
    r = run(["bash", str(ORIOLE / "render-config.sh"), "--check"], env=base_env(**oenv))
    assert r.returncode == 0, r.stderr
    perch_accepts(perch_bin, tmp_path, "compose-perch", penv)
    _, full = compose_config(tmp_path, "docker-compose.yml", "docker-compose.tigris.yml",
                             env_overrides={"PERCH_ORIGIN_ACCESS_KEY_ID": "t", "PERCH_ORIGIN_SECRET_ACCESS_KEY": "s"})
    tigris = yaml.safe_load(full.stdout)["services"]["perch"]["environment"]
    check_perch_env(perch_env_names, tigris, "compose's Tigris override")
    perch_accepts(perch_bin, tmp_path, "compose-tigris", tigris)


def test_env_sample_documents_every_variable_the_compose_files_use():
    used = set()
    for f in ("docker-compose.yml", "docker-compose.tigris.yml"):
        used |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (COMPOSE / f).read_text()))
    sample = (COMPOSE / ".env.sample").read_text()
    documented = set(re.findall(r"^#?([A-Z_][A-Z0-9_]*)=", sample, re.M))
    assert used <= documented, f"not in .env.sample: {sorted(used - documented)}"
    compose_own = {"COMPOSE_PROJECT_NAME", "COMPOSE_FILE"}
    assert documented - compose_own <= used, f"in .env.sample but unused: {sorted(documented - compose_own - used)}"
    # Every documented variable has a comment above it.
    lines = sample.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Z_]+=", line):
            j = i - 1
            while j >= 0 and re.match(r"^[A-Z_]+=", lines[j]):
                j -= 1
            assert j >= 0 and lines[j].startswith("#"), f"{line!r} has no comment"


# --------------------------------------------------------------------------- fly.toml

# The fly.toml keys this deployment may use, from flyctl's appconfig (internal/appconfig/config.go
# and its testdata/full-reference.toml). A misspelt key would be silently ignored by flyctl.
FLY_KEYS = {
    "": {"app", "primary_region", "kill_signal", "kill_timeout", "swap_size_mb", "console_command", "build",
         "deploy", "env", "processes", "mounts", "http_service", "services", "checks", "files", "metrics", "vm",
         "restart", "statics", "experimental", "machine_checks", "host_dedication_id"},
    "build": {"builder", "image", "builtin", "dockerfile", "ignorefile", "build-target", "buildpacks", "settings",
              "args"},
    "mounts": {"source", "destination", "initial_size", "snapshot_retention", "scheduled_snapshots", "processes",
               "auto_extend_size_threshold", "auto_extend_size_increment", "auto_extend_size_limit"},
    "services": {"internal_port", "protocol", "processes", "auto_start_machines", "auto_stop_machines",
                 "min_machines_running", "concurrency", "ports", "tcp_checks", "http_checks", "machine_checks"},
    "services.ports": {"port", "start_port", "end_port", "handlers", "force_https", "http_options", "tls_options",
                       "proxy_proto_options"},
    "services.tcp_checks": {"interval", "timeout", "grace_period"},
    "checks.*": {"port", "type", "interval", "timeout", "grace_period", "method", "path", "protocol",
                 "tls_skip_verify", "tls_server_name", "headers", "processes"},
    "metrics": {"port", "path", "processes", "https"},
    "vm": {"size", "cpu_kind", "cpus", "memory", "memory_mb", "gpus", "gpu_kind", "kernel_args", "processes"},
}


@pytest.fixture(scope="module")
def fly():
    return tomllib.loads((FLY / "fly.toml").read_text())


def as_list(v):
    return v if isinstance(v, list) else [v]


def test_fly_toml_uses_only_known_keys(fly):
    assert set(fly) <= FLY_KEYS[""], set(fly) - FLY_KEYS[""]
    assert set(fly["build"]) <= FLY_KEYS["build"]
    for m in as_list(fly["mounts"]):
        assert set(m) <= FLY_KEYS["mounts"], m
    for s in fly["services"]:
        assert set(s) <= FLY_KEYS["services"], s
        for p in s["ports"]:
            assert set(p) <= FLY_KEYS["services.ports"], p
        for c in s.get("tcp_checks", []):
            assert set(c) <= FLY_KEYS["services.tcp_checks"], c
    for name, c in fly["checks"].items():
        assert set(c) <= FLY_KEYS["checks.*"], (name, c)
    for m in as_list(fly["metrics"]):
        assert set(m) <= FLY_KEYS["metrics"], m
    for v in fly["vm"]:
        assert set(v) <= FLY_KEYS["vm"], v


def test_fly_machine_stops_when_idle_and_its_stop_fits_the_kill_timeout(fly):
    env = fly["env"]
    [service] = fly["services"]
    assert service["internal_port"] == 5432 and service["protocol"] == "tcp"
    assert service["auto_stop_machines"] == "stop"
    assert service["auto_start_machines"] is True
    assert service["min_machines_running"] == 0

    # The supervisor handles the kill signal ...
    supervise = (FLY / "supervise.sh").read_text()
    sig = fly["kill_signal"].removeprefix("SIG")
    assert f"trap 'on_signal {sig}' {sig}" in supervise
    # ... and its budgets (Postgres, its SIGQUIT grace, Perch) fit in the kill timeout, Fly's maximum
    # being 300 s, even with the 5 s the supervisor waits after each SIGKILL.
    pg, perch = int(env["SUPERVISE_POSTGRES_STOP_TIMEOUT"]), int(env["SUPERVISE_PERCH_STOP_TIMEOUT"])
    kill = fly["kill_timeout"]
    assert kill <= 300
    assert pg + 10 + perch < kill, (pg, perch, kill)
    assert pg + 10 + 5 + perch + 5 <= kill, (pg, perch, kill)
    assert "wait_exit \"$pid\" 10" in supervise and len(re.findall(r'wait_exit "\$\w+" 5 ', supervise)) == 2
    assert pg >= 60
    # Perch's drain ends before the supervisor's budget for it does (Perch then exits 0 on its own),
    # with time left for the requests in flight and the cache index; the drain's quiet period is
    # short, as Postgres has exited when Perch gets SIGTERM.
    drain, quiet = seconds(env["PERCH_DRAIN_TIMEOUT"]), seconds(env["PERCH_DRAIN_QUIET"])
    assert drain < perch, (drain, perch)
    assert perch - drain >= 10 and drain >= 60, (drain, perch)
    assert quiet <= 5
    # The supervisor's defaults are fly.toml's values.
    for name, value in (("SUPERVISE_POSTGRES_STOP_TIMEOUT", pg), ("SUPERVISE_PERCH_STOP_TIMEOUT", perch)):
        assert f"${{{name}:-{value}}}" in supervise, f"supervise.sh's default for {name} is not {value}"
    # The sums written in the comments and in the docs are these.
    plain = f"{pg} + 10 + {perch} = {pg + 10 + perch}"
    assert plain in (FLY / "fly.toml").read_text(), plain
    assert plain in (REPO / "docs/deploy-fly.md").read_text(), plain
    full = f"{pg} + 10 + 5 + {perch} + 5 = {pg + 10 + 5 + perch + 5}"
    assert full in supervise, full


def test_sums_in_the_deployment_comments_and_docs_are_right():
    files = [FLY / "fly.toml", FLY / "supervise.sh", COMPOSE / "docker-compose.yml", COMPOSE / ".env.sample",
             REPO / "docs/deploy-fly.md", REPO / "docs/deploy-local.md"]
    found = 0
    for f in files:
        for terms, total in re.findall(r"(?<![\d.])(\d+(?: \+ \d+)+) = (\d+)(?![\d.])", f.read_text()):
            found += 1
            assert sum(int(x) for x in terms.split(" + ")) == int(total), f"{f.name}: {terms} = {total}"
    assert found >= 3


def test_fly_docs_give_fly_toml_values():
    env = tomllib.loads((FLY / "fly.toml").read_text())["env"]
    doc = (REPO / "docs/deploy-fly.md").read_text()
    named = re.findall(r"`([A-Z][A-Z0-9_]+)=([^`\s]+)`", doc)
    assert {n for n, _ in named} >= {"SUPERVISE_POSTGRES_STOP_TIMEOUT", "SUPERVISE_PERCH_STOP_TIMEOUT",
                                     "PERCH_DRAIN_TIMEOUT", "PERCH_DRAIN_QUIET"}, named
    for name, value in named:
        if name in env:
            assert value == env[name], f"docs/deploy-fly.md says {name}={value}, fly.toml {env[name]}"


def test_fly_volume_metrics_checks_and_environment_fit_together(fly, perch_env_names, perch_bin, tmp_path):
    env = fly["env"]
    [mount] = as_list(fly["mounts"])
    data = mount["destination"].rstrip("/") + "/"
    pgdata, perch_data = env["PGDATA"], env["PERCH_DATA_DIR"]
    assert pgdata.startswith(data) and perch_data.startswith(data), "both data directories live on the volume"
    assert not pgdata.startswith(perch_data.rstrip("/") + "/") and not perch_data.startswith(pgdata.rstrip("/") + "/")
    assert Path(pgdata).parent != Path(mount["destination"]), "PGDATA must not be the volume's root directory"

    check_perch_env(perch_env_names, env, "fly.toml [env]")
    for k in env:
        assert not re.search(r"SECRET|PASSWORD|ACCESS_KEY", k), f"{k} belongs in fly secrets, not [env]"
    admin_host, admin_port = env["PERCH_ADMIN_LISTEN"].rsplit(":", 1)
    assert admin_host in ("[::]", "0.0.0.0"), "Fly scrapes [metrics] and runs checks over the private network"
    [metrics] = as_list(fly["metrics"])
    assert metrics == {"port": int(admin_port), "path": "/metrics"}
    assert fly["checks"]["perch"]["port"] == int(admin_port) and fly["checks"]["perch"]["path"] == "/healthz"
    # OrioleDB reaches Perch on loopback, by a name the restore tool can use.
    listen_host, listen_port = env["PERCH_LISTEN"].rsplit(":", 1)
    assert listen_host == "127.0.0.1" and env["ORIOLE_S3_ENDPOINT"] == f"localhost:{listen_port}"
    assert env["PERCH_ORIGIN"].startswith("https://")

    r = run(["bash", str(ORIOLE / "render-config.sh"), "--check"],
            env=base_env(**env, ORIOLE_S3_BUCKET="my-bucket", PERCH_ACCESS_KEY_ID="k", PERCH_SECRET_ACCESS_KEY="s"))
    assert r.returncode == 0, r.stderr
    perch_accepts(perch_bin, tmp_path, "fly", env)

    # Sizes on the volume (GB): OrioleDB's local data, its WAL (max_wal_size, 1 GB), Perch's cache and
    # its writes not yet uploaded (outside the cache) leave 2 GB for catalogs, undo, temporary files
    # and Perch's spool.
    size = int(re.fullmatch(r"(\d+)gb", mount["initial_size"].lower()).group(1))
    cache = size_bytes(env["PERCH_CACHE_DISK_BYTES"]) / 1e9
    dirty = size_bytes(env["PERCH_DIRTY_BYTES_MAX"]) / 1e9
    local = size_bytes(env["ORIOLE_S3_DESIRED_SIZE"]) / 1e9
    assert "max_wal_size = 1GB" in (ORIOLE / "postgresql.conf").read_text()
    assert local + 1 + cache + dirty + 2 <= size, (local, cache, dirty, size)
    # The writes not yet uploaded go up within the drain at a modest upload rate; the lag that
    # /healthz reports stays well inside the drain too.
    drain = seconds(env["PERCH_DRAIN_TIMEOUT"])
    assert dirty * 1e9 / FLY_MIN_UPLOAD_RATE <= drain, (dirty, drain)
    assert seconds(env["PERCH_DIRTY_AGE_MAX"]) <= drain

    # The build: fly.toml's paths are relative to fly/; the context is the repository root.
    assert (FLY / fly["build"]["dockerfile"]).is_file() and (FLY / fly["build"]["ignorefile"]).is_file()
    assert "target" in (FLY / fly["build"]["ignorefile"]).read_text().split()


def admin_port_needs_its_token(perch_bin, tmp_path, name, env, token):
    """Perch with `env`, its admin listener on all addresses (port 0): refused without a token, and
    with `token` only /healthz, /readyz and /metrics answer without it."""
    env = {k: v for k, v in env.items() if k.startswith(("PERCH_", "AWS_"))}
    env.pop("PERCH_ADMIN_TOKEN", None)
    env.update(PERCH_LISTEN="127.0.0.1:0", PERCH_ADMIN_LISTEN="0.0.0.0:0", PERCH_DATA_DIR=str(tmp_path / name))
    r = run([perch_bin, "serve"], env=clean_env(**env), timeout=30)
    assert r.returncode != 0 and "PERCH_ADMIN_TOKEN" in r.stderr, (r.returncode, r.stderr)
    env["PERCH_ADMIN_TOKEN"] = token
    p = start_perch(perch_bin, tmp_path / f"{name}-run", env)
    try:
        base = f"http://127.0.0.1:{p.admin_port}"
        for path in ("/healthz", "/metrics"):
            assert requests.get(base + path, timeout=5).status_code == 200, path
        assert requests.get(base + "/status", timeout=5).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.get(base + "/status", headers=auth, timeout=5).status_code == 200
        r = run([perch_bin, "status", "--admin", f"127.0.0.1:{p.admin_port}"], env=clean_env(PERCH_ADMIN_TOKEN=token))
        assert r.returncode == 0 and "backlog:" in r.stdout, r.stderr
    finally:
        p.stop()


def test_admin_ports_beyond_loopback_have_a_token(fly, perch_bin, tmp_path):
    # Fly binds the admin port on all addresses: the token is a secret the comments list, which
    # OrioleDB never gets; compose's perch service passes it from .env.
    env = fly["env"]
    assert not env["PERCH_ADMIN_LISTEN"].startswith(("127.", "[::1]"))
    secrets = (FLY / "fly.toml").read_text().split("\napp =")[0]
    assert "PERCH_ADMIN_TOKEN" in secrets and "PERCH_ADMIN_TOKEN" not in env
    assert "-u PERCH_ADMIN_TOKEN" in (FLY / "supervise.sh").read_text()
    admin_port_needs_its_token(perch_bin, tmp_path, "fly-admin", env, "fly-admin-token-0123456789")
    quiet, full = compose_config(tmp_path, "docker-compose.yml")
    assert quiet.returncode == 0, quiet.stderr
    penv = yaml.safe_load(full.stdout)["services"]["perch"]["environment"]
    assert not penv["PERCH_ADMIN_LISTEN"].startswith("127.")
    assert penv["PERCH_ADMIN_TOKEN"] == read_env_file(COMPOSE / ".env.sample")["PERCH_ADMIN_TOKEN"]
    quiet, _ = compose_config(tmp_path, "docker-compose.yml", env_overrides={"PERCH_ADMIN_TOKEN": ""})
    assert quiet.returncode != 0 and "set PERCH_ADMIN_TOKEN in compose/.env" in quiet.stderr
    admin_port_needs_its_token(perch_bin, tmp_path, "compose-admin", penv, penv["PERCH_ADMIN_TOKEN"])
    # The image's default binds beyond loopback too, and says the token is required.
    assert "PERCH_ADMIN_TOKEN" in (REPO / "deploy/perch.Dockerfile").read_text()


# --------------------------------------------------------------------------- Dockerfiles


def dockerfile(path):
    """Instructions as (KEYWORD, arguments), with continuations joined and comments dropped."""
    out, cur = [], ""
    for line in Path(path).read_text().splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        cur = ""
    return out


def stages(instructions):
    result, current = [], None
    for kw, arg in instructions:
        if kw == "FROM":
            current = [(kw, arg)]
            result.append(current)
        elif current is not None:
            current.append((kw, arg))
    return result


def copy_sources(instructions):
    for kw, arg in instructions:
        if kw in ("COPY", "ADD") and "--from=" not in arg:
            parts = [p for p in arg.split() if not p.startswith("--")]
            yield from parts[:-1]


@pytest.mark.parametrize("path,context", [
    ("deploy/perch.Dockerfile", "."), ("fly/Dockerfile", "."), ("oriole-image/Dockerfile", "oriole-image")])
def test_dockerfile_copy_sources_exist(path, context):
    for src in copy_sources(dockerfile(REPO / path)):
        assert (REPO / context / src).exists(), f"{path}: COPY {src} (context {context}) does not exist"


def test_perch_image_is_small_non_root_and_checks_healthz(perch_env_names):
    ins = dockerfile(REPO / "deploy/perch.Dockerfile")
    build, final = stages(ins)
    assert build[0][1].startswith("${RUST_IMAGE}") and ("ARG", "RUST_IMAGE=rust:1.95-bookworm") in ins
    assert ("ARG", "RUNTIME_IMAGE=debian:bookworm-slim") in ins and final[0] == ("FROM", "${RUNTIME_IMAGE}")
    assert any(kw == "RUN" and "libclang-dev" in a for kw, a in build)
    user = [a for kw, a in final if kw == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    [health] = [a for kw, a in final if kw == "HEALTHCHECK"]
    assert "/healthz" in health
    assert ("ENTRYPOINT", '["perch"]') in final and ("STOPSIGNAL", "SIGTERM") in final
    envs = " ".join(a for kw, a in final if kw == "ENV")
    check_perch_env(perch_env_names, dict.fromkeys(re.findall(r"\b(PERCH_[A-Z_]+)=", envs)), "perch.Dockerfile")
    assert "target" in (REPO / "deploy/perch.Dockerfile.dockerignore").read_text().split()


def test_fly_image_builds_perch_exactly_as_the_perch_image():
    perch_build = stages(dockerfile(REPO / "deploy/perch.Dockerfile"))[0]
    fly_stages = stages(dockerfile(REPO / "fly/Dockerfile"))
    assert fly_stages[0][1:] == perch_build[1:]
    final = fly_stages[-1]
    assert ("ENTRYPOINT", '["/usr/local/bin/perch-fly-supervise"]') in final
    assert any(kw == "COPY" and a == "fly/supervise.sh /usr/local/bin/perch-fly-supervise" for kw, a in final)
    assert any(kw == "RUN" and "/tmp/perch-oriole/install.sh" in a for kw, a in final)


def test_scripts_run_directly_are_executable():
    # The Dockerfiles run install.sh straight from the build context (COPY keeps the mode).
    for name in ("oriole-image/install.sh", "oriole-image/restore.py", "oriole-image/entrypoint.sh",
                 "oriole-image/render-config.sh", "oriole-image/oriole_s3.py", "fly/supervise.sh"):
        assert os.access(REPO / name, os.X_OK), f"{name} is not executable"


def test_oriole_image_wiring():
    ins = dockerfile(ORIOLE / "Dockerfile")
    assert ("ARG", "ORIOLEDB_IMAGE=orioledb/orioledb:latest-pg17-ubuntu") in ins
    assert ("ENTRYPOINT", '["perch-oriole-entrypoint"]') in ins
    assert ("CMD", '["postgres", "-D", "/etc/postgresql"]') in ins
    assert ("STOPSIGNAL", "SIGINT") in ins
    install = (ORIOLE / "install.sh").read_text()
    assert "/usr/local/bin/perch-oriole-entrypoint" in install and "/etc/postgresql/postgresql.conf" in install
    conf = (ORIOLE / "postgresql.conf").read_text()
    settings = dict(re.findall(r"^([a-z0-9_.]+)\s*=\s*(.+?)\s*$", conf, re.M))
    assert settings["orioledb.s3_mode"] == "on"
    assert settings["orioledb.s3_use_https"] == "off"
    assert settings["archive_mode"] == "on" and settings["archive_library"] == "'orioledb'"
    assert int(settings["orioledb.s3_num_workers"]) >= 1
    assert settings["include"] == "'perch-s3.conf'"
    # The entrypoint renders exactly the file postgresql.conf includes.
    assert "conf_file=${ORIOLE_CONF_FILE:-/etc/postgresql/perch-s3.conf}" in (ORIOLE / "entrypoint.sh").read_text()


# --------------------------------------------------------------------------- docs and leftovers


DEPLOY_FILES = [p for d in ("oriole-image", "compose", "fly", "deploy") for p in (REPO / d).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.name != ".env"]
DEPLOY_DOCS = [REPO / "docs/deploy-fly.md", REPO / "docs/deploy-local.md"]


def test_nothing_is_left_as_todo():
    for p in DEPLOY_FILES + DEPLOY_DOCS + [REPO / "README.md"]:
        assert not re.search(r"\b(TODO|FIXME|XXX)\b", p.read_text()), p


def test_deploy_files_name_only_variables_perch_has(perch_env_names, fly):
    # Comments included: every PERCH_* name in fly/ and compose/ is one `perch serve` reads, except
    # the compose variables that only choose host ports.
    for p in DEPLOY_FILES:
        if p.parts[len(REPO.parts)] not in ("fly", "compose"):
            continue
        for name in set(re.findall(r"\bPERCH_[A-Z_]+[A-Z]\b", p.read_text())):
            assert name in perch_env_names or name in COMPOSE_OWN_PERCH_VARS, \
                f"{p.relative_to(REPO)} names {name}, which `perch serve --help` does not know"
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert COMPOSE_OWN_PERCH_VARS.isdisjoint(compose["services"]["perch"]["environment"])
    # fly.toml sets every write-back setting.
    for name in WRITE_BACK:
        assert name in fly["env"], f"fly.toml does not set {name}"


def test_docs_name_only_settings_and_commands_perch_has(perch_commands, perch_env_names):
    env_names = perch_env_names | set(re.findall(r"\bPERCH_[A-Z_]+[A-Z]\b", "".join(perch_commands.values())))
    for doc in DEPLOY_DOCS:
        text = doc.read_text()
        assert "## After write-back" not in text and "not built yet" not in text, doc.name
        for name in re.findall(r"\bPERCH_[A-Z_]+[A-Z]\b", text):
            assert name in env_names or name in COMPOSE_OWN_PERCH_VARS, \
                f"{doc.name} names {name}, which perch does not read"
        for command in re.findall(r"`perch ([a-z]+)", text):
            assert command in perch_commands, f"{doc.name} names `perch {command}`, which perch does not have"
        for command, args in re.findall(r"\bperch (?=([a-z]+)\b([^\n`\"]*))", text):
            if command not in perch_commands:
                continue
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]+", args):
                assert flag in perch_commands[command], \
                    f"{doc.name} names perch {command} {flag}, which it does not have"
    # The walkthroughs show how to see and wait for what Perch has not uploaded yet.
    for doc in DEPLOY_DOCS:
        text = doc.read_text()
        assert "perch status" in text and "perch flush" in text, doc.name


def test_readme_has_a_deploy_section():
    readme = (REPO / "README.md").read_text()
    m = re.search(r"^## Deploy\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert m, "README.md has no '## Deploy' section"
    section = m.group(1)
    for needle in ("docs/deploy-local.md", "docs/deploy-fly.md", "cp .env.sample .env", "CREATE EXTENSION",
                   "blog_post", "oriole-s3 ls"):
        assert needle in section, needle
