#!/usr/bin/env python3
"""Restore benchmark: the image's restore tool (oriole-image/restore.py) through a fresh Perch,
the same tool direct, and OrioleDB's upstream loader through a fresh Perch and direct, against an
OrioleDB-shaped bucket in moto behind the origin proxy at +20 and +80 ms (the same run, variants
alternated, medians).

The bucket is the one a real OrioleDB left (oriole-image/testdata/bucket-listing.tsv: six
checkpoints of a 1M-row table) at full size, built by gateway/tests/python/oriole_bucket.py; the
1 MiB data parts, which no loader reads (OrioleDB reads them lazily after the start), are left out.
Where no OrioleDB is at hand the first query is not run (see docs/benchmarks.md).

Usage (from the repository, after a release build):
  python3 bench/restore-bench.py --target-dir $CARGO_TARGET_DIR/release \
      --old-loader /path/to/orioledb_s3_loader.py --pg-bin /path/to/pg/bin [--rounds 5]
--old-loader and --pg-bin are optional: without them the upstream loader is not measured. The
upstream loader is patched as the image patched it until now (dict iteration in small files).
Perch's data dirs and the restored data dirs go under $TMPDIR: on a machine whose own filesystem
is not what a Fly volume is (ext4 with a journal), point it at one (docs/benchmarks.md).
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "gateway" / "tests" / "python"))
import oriole_bucket  # noqa: E402

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

BUCKET = "orioledb"
MOTO_KEY, MOTO_SECRET = "testing", "testing"
PERCH_KEY, PERCH_SECRET = "perch-dev", "perch-dev-secret"
TESTGRES_SHIM = '''\
import os, subprocess
def get_bin_path(name):
    return os.path.join(os.environ["PG_BIN"], name)
class utils:
    @staticmethod
    def execute_utility(args):
        return subprocess.run(args, check=True, capture_output=True, text=True,
                              env=dict(os.environ, LC_ALL="C")).stdout
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=30):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("port %d never opened" % port)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERCH_", "AWS_"))}
    env.update(extra)
    return env


# The CPUs of the origin (moto and the proxy) and of the rest (Perch and the loaders), when
# --origin-cpus splits them; None: every process may run anywhere.
ORIGIN_CPUS = None
MACHINE_CPUS = None


def on_cpus(cpus):
    """A preexec_fn that keeps the child on `cpus` (None: anywhere)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, log, env=None, cpus=None):
        with open(log, "ab") as out:
            p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=out, env=env or clean_env(),
                                 start_new_session=True, preexec_fn=on_cpus(cpus))
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in self.procs:
            self.stop(p)


def first_line(p, prefix):
    line = p.stdout.readline().decode()
    if not line.startswith(prefix):
        raise RuntimeError("expected %r, got %r" % (prefix, line))
    return line


def wait_ready(admin, limit=60):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen("http://%s/readyz" % admin, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.002)
    raise RuntimeError("perch never became ready")


def cpu_seconds(pid):
    """User + system CPU time of a live process so far (/proc/PID/stat), in seconds."""
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-dir", required=True, help="holds perch and perch-bench")
    ap.add_argument("--old-loader")
    ap.add_argument("--pg-bin")
    ap.add_argument("--rounds", type=int, default=6,
                    help="rounds a cell; the variants take turns going first, so keep it a multiple of their number")
    ap.add_argument("--latencies", default="20,80")
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--origin", choices=["moto", "s3s-fs"], default="moto",
                    help="the S3 server behind the proxy: moto (one Python process, which reads a whole object to "
                         "answer any range of it) or s3s-fs (Rust, checks signatures, reads only a range's bytes)")
    ap.add_argument("--stream-mib-s", type=int,
                    help="pace each origin answer to this many MiB/s, as one TCP stream from a distant origin is bounded "
                         "(AWS's performance guidelines plan on 85-90 MB/s a request); unpaced by default")
    ap.add_argument("--wait-ready", action="store_true",
                    help="start the loader once Perch's /readyz answers 200 (as fly/supervise.sh starts Postgres), "
                         "and count Perch's start and prewarm in its time")
    ap.add_argument("--origin-cpus",
                    help="CPUs (e.g. 1) for the origin (moto and the latency proxy); Perch and the loaders get "
                         "the others: a Machine whose origin is remote, as Tigris is, on a machine that runs both")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds of quiet before each timed restore (back to back, every other restore "
                         "ran 0.4-0.6 s faster on this machine, whatever the variant: docs/benchmarks.md)")
    ap.add_argument("--variants", help="comma-separated subset of fixed-perch,fixed-direct,old-perch,old-direct"
                    " (default: all that apply)")
    ap.add_argument("--perch-arg", action="append", default=[],
                    help="one more argument for each fresh Perch (repeat), e.g. --perch-arg=--prewarm-bucket=nonesuch")
    args = ap.parse_args()
    if args.origin_cpus:
        global ORIGIN_CPUS, MACHINE_CPUS
        ORIGIN_CPUS = {int(c) for c in args.origin_cpus.split(",")}
        MACHINE_CPUS = os.sched_getaffinity(0) - ORIGIN_CPUS
        if not MACHINE_CPUS:
            ap.error("--origin-cpus leaves no CPU for Perch and the loaders")
        print("origin on CPUs %s; Perch and the loaders on CPUs %s" % (sorted(ORIGIN_CPUS), sorted(MACHINE_CPUS)),
              flush=True)

    work = Path(tempfile.mkdtemp(prefix="perch-restore-bench-"))
    procs = Procs()
    try:
        run(args, work, procs)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def run(args, work, procs):
    target = Path(args.target_dir)
    moto_port = free_port()
    if args.origin == "s3s-fs":
        (work / "s3s-fs").mkdir()
        procs.start([shutil.which("s3s-fs"), "--host", "127.0.0.1", "--port", str(moto_port), "--access-key",
                     MOTO_KEY, "--secret-key", MOTO_SECRET, str(work / "s3s-fs")], work / "origin.log",
                    cpus=ORIGIN_CPUS)
    else:
        procs.start([shutil.which("moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)], work / "origin.log",
                    cpus=ORIGIN_CPUS)
    wait_port(moto_port)
    moto_url = "http://127.0.0.1:%d" % moto_port
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id=MOTO_KEY,
                      aws_secret_access_key=MOTO_SECRET,
                      config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))
    s3.create_bucket(Bucket=BUCKET)
    layout = oriole_bucket.Layout(scale=1)
    for k in [k for k in layout.objects if k.startswith("orioledb_data/") and not k.endswith(".map")]:
        del layout.objects[k]
    t = time.monotonic()
    oriole_bucket.upload(s3, BUCKET, layout)
    print("bucket: %d objects, %.1f MB (uploaded in %.1f s)" % (
        len(layout.objects), layout.total_bytes() / 1e6, time.monotonic() - t), flush=True)

    old = None
    if args.old_loader and args.pg_bin:
        old = work / "old"
        old.mkdir()
        text = Path(args.old_loader).read_text().replace(
            "for filename, checkpoint in file_checksums:", "for filename, checkpoint in file_checksums.items():")
        (old / "orioledb_s3_loader.py").write_text(text)
        (old / "testgres.py").write_text(TESTGRES_SHIM)
        (old / "aws.conf").write_text("[default]\ns3 =\n    addressing_style = path\n")

    results = {}
    for latency in [int(x) for x in args.latencies.split(",")]:
        proxy = procs.start([str(target / "perch-bench"), "origin-proxy", "--listen", "127.0.0.1:0",
                             "--upstream", moto_url, "--latency-ms", str(latency)]
                            + (["--bandwidth-bytes-per-sec", str(args.stream_mib_s << 20)] if args.stream_mib_s else []),
                            work / "proxy.log",
                            cpus=ORIGIN_CPUS)
        proxy_addr = first_line(proxy, "listening on ").split()[-1]
        proxy_url = "http://" + proxy_addr
        variants = ["fixed-perch", "fixed-direct"] + (["old-perch", "old-direct"] if old else [])
        if args.variants:
            variants = [v for v in args.variants.split(",") if v in variants]
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                dest = work / ("pgdata-%s-%d-%d" % (v, latency, r))
                # Each restore starts with the previous one's 100+ MB (and a Perch's data dir),
                # written and removed, already written back. Turns still matter here (a variant's
                # second restore in a row was 0.3-0.7 s slower, docs/benchmarks.md, 2026-12-07):
                # with the turns rotating, an even number of rounds gives each variant the same.
                os.sync()
                if args.pause:
                    time.sleep(args.pause)
                secs, extra = restore_once(v, args, target, work, procs, proxy_url, proxy_addr, dest, old)
                ok = check(layout, dest)
                results.setdefault((latency, v), []).append(secs)
                print("+%d ms %-12s round %d: %.2f s%s; data dir %s" % (
                    latency, v, r + 1, secs, extra, ok), flush=True)
                shutil.rmtree(dest, ignore_errors=True)
        cpu = CPU.get((proxy_url, "fixed-perch"), [])
        print("+%d ms: Perch's CPU a restore (fixed loader) %.2f s median, %.2f–%.2f s" % (
            latency, median(cpu), min(cpu, default=float("nan")), max(cpu, default=float("nan"))), flush=True)
        procs.stop(proxy)

    print("\nOrigin %s; each origin answer %s." % (args.origin,
        "paced to %d MiB/s" % args.stream_mib_s if args.stream_mib_s else "unpaced"))
    print("\n| origin latency | fixed loader via fresh Perch | fixed loader direct | upstream loader direct "
          "| Perch vs upstream direct | Perch vs fixed direct | upstream loader via fresh Perch "
          "| upstream via Perch vs upstream direct |")
    print("|---|---|---|---|---|---|---|---|")
    for latency in [int(x) for x in args.latencies.split(",")]:
        p = median(results.get((latency, "fixed-perch"), []))
        d = median(results.get((latency, "fixed-direct"), []))
        o = median(results.get((latency, "old-direct"), []))
        op = median(results.get((latency, "old-perch"), []))
        print("| +%d ms | %.2f s | %.2f s | %s | %s | %.2f× | %s | %s |" % (
            latency, p, d, "%.2f s" % o if old else "n/a", "%.1f×" % (o / p) if old else "n/a", d / p,
            "%.2f s" % op if old else "n/a", "%.1f×" % (o / op) if old else "n/a"))


# Perch's CPU time per restore, by (origin proxy, variant).
CPU = {}


def restore_once(v, args, target, work, procs, proxy_url, proxy_addr, dest, old):
    extra = ""
    if v in ("fixed-perch", "old-perch"):
        data = work / "perch-data"
        shutil.rmtree(data, ignore_errors=True)
        env = clean_env(PERCH_ORIGIN_ACCESS_KEY_ID=MOTO_KEY, PERCH_ORIGIN_SECRET_ACCESS_KEY=MOTO_SECRET,
                        PERCH_LOG="warn")
        started = time.monotonic()
        perch = procs.start([str(target / "perch"), "serve", "--listen", "127.0.0.1:0", "--admin-listen",
                             "127.0.0.1:0", "--data-dir", str(data), "--origin", proxy_url,
                             "--origin-region", "us-east-1", "--drain-quiet", "0s"] + args.perch_arg, work / "perch.log", env,
                            cpus=MACHINE_CPUS)
        fields = dict(f.split("=", 1) for f in first_line(perch, "listening ").split()[1:])
        if args.wait_ready:
            wait_ready(fields["admin"])
        ready = time.monotonic() - started
        if v == "fixed-perch":
            secs = fixed(args, "http://" + fields["s3"], PERCH_KEY, PERCH_SECRET, dest)
        else:
            secs, extra = upstream(args, fields["s3"], PERCH_KEY, PERCH_SECRET, dest, old)
        cpu = cpu_seconds(perch.pid)
        CPU.setdefault((proxy_url, v), []).append(cpu)
        extra += " (perch CPU %.2f s)" % cpu
        procs.stop(perch)
        # Removed now, so that the sync before the next restore covers it.
        shutil.rmtree(data, ignore_errors=True)
        if args.wait_ready:
            extra += " (of which perch start to /readyz %.2f s)" % ready
            secs += ready
        else:
            extra += " (perch start %.2f s, not included)" % ready
    elif v == "fixed-direct":
        secs = fixed(args, proxy_url, MOTO_KEY, MOTO_SECRET, dest)
    else:
        secs, extra = upstream(args, proxy_addr, MOTO_KEY, MOTO_SECRET, dest, old)
    return secs, extra


def upstream(args, addr, key, secret, dest, old):
    """OrioleDB's upstream loader (one object at a time) against `addr`."""
    dest.mkdir()
    env = clean_env(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret,
                    AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(old / "aws.conf"),
                    AWS_SHARED_CREDENTIALS_FILE="/dev/null", PG_BIN=args.pg_bin, PYTHONPATH=str(old))
    started = time.monotonic()
    r = subprocess.run([sys.executable, str(old / "orioledb_s3_loader.py"), "--endpoint",
                        "http://localhost:%s" % addr.rsplit(":", 1)[1], "--prefix", BUCKET,
                        "--data-dir", str(dest)], cwd=dest, env=env, capture_output=True, text=True,
                       preexec_fn=on_cpus(MACHINE_CPUS))
    secs = time.monotonic() - started
    if r.returncode != 0:
        raise RuntimeError("upstream loader failed: %s" % r.stderr[-2000:])
    missing = r.stdout.count("File not found")
    return secs, " (%d objects not found)" % missing if missing else ""


def fixed(args, endpoint, key, secret, dest):
    env = clean_env(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1")
    started = time.monotonic()
    r = subprocess.run([sys.executable, str(REPO / "oriole-image" / "restore.py"), "--endpoint", endpoint,
                        "--bucket", BUCKET, "--data-dir", str(dest), "--jobs", str(args.jobs)],
                       env=env, capture_output=True, text=True, preexec_fn=on_cpus(MACHINE_CPUS))
    secs = time.monotonic() - started
    if r.returncode != 0:
        raise RuntimeError("restore.py failed: %s" % r.stderr[-2000:])
    return secs


def check(layout, dest):
    got = {k: v for k, v in oriole_bucket.restored(dest).items() if v is not None}
    want = {k: v for k, v in layout.expected.items() if v is not None}
    missing = sorted(set(want) - set(got))
    wrong = [k for k in want if k in got and got[k] != want[k]]
    if not missing and not wrong:
        return "exact"
    return "%d files missing (%s), %d differ" % (len(missing), ", ".join(missing[:4]), len(wrong))


if __name__ == "__main__":
    main()
