#!/usr/bin/env python3
"""Hits as boto3 sends them: one boto3 client, sequential GETs of one 1 KiB object through a fresh
Perch on a file origin (boto3 asks for the stored checksums on every GET, as current SDKs do).

Usage: python3 bench/boto-hits.py PERCH_BIN [PERCH_BIN ...]   (each binary in turn; prints GET/s)
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

import boto3
from botocore.config import Config

ACCESS_KEY, SECRET_KEY = "perch-dev", "perch-dev-secret"
WARMUP, GETS = 200, 3000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(perch):
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "origin"))
        port = free_port()
        proc = subprocess.Popen(
            [perch, "serve", "--origin", "file://" + os.path.join(d, "origin"), "--data-dir",
             os.path.join(d, "data"), "--listen", f"127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PERCH_LOG="warn", PERCH_ACCESS_KEY_ID=ACCESS_KEY,
                     PERCH_SECRET_ACCESS_KEY=SECRET_KEY))
        try:
            s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10}))
            deadline = time.time() + 10
            while True:
                try:
                    s3.create_bucket(Bucket="hits")
                    break
                except Exception:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.05)
            s3.put_object(Bucket="hits", Key="k", Body=b"x" * 1024)
            for _ in range(WARMUP):
                s3.get_object(Bucket="hits", Key="k")["Body"].read()
            started = time.perf_counter()
            for _ in range(GETS):
                s3.get_object(Bucket="hits", Key="k")["Body"].read()
            elapsed = time.perf_counter() - started
            print(f"{perch}: {GETS / elapsed:.0f} GET/s, {elapsed / GETS * 1e6:.0f} us a GET")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for perch in sys.argv[1:]:
        run(perch)
