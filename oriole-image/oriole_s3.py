#!/opt/perch-oriole/venv/bin/python3
"""oriole-s3: what the entrypoint (and an operator) needs to ask the bucket, through Perch.

Talks to Perch exactly as OrioleDB does: http://$ORIOLE_S3_ENDPOINT, path style, bucket
$ORIOLE_S3_BUCKET (or $BUCKET_NAME), signed with PERCH_ACCESS_KEY_ID / PERCH_SECRET_ACCESS_KEY
(read from the environment only, never printed).

  oriole-s3 wait [--timeout S]     wait until Perch answers for the bucket (exit 3: keys refused)
  oriole-s3 probe                  print `missing`, `empty` or `has-data`
  oriole-s3 create-bucket          create the bucket (used when ORIOLE_CREATE_BUCKET=true)
  oriole-s3 ls [--prefix P] [--keys]  objects and bytes under each top-level prefix
  oriole-s3 lock show [--local F]  the OrioleDB lock in the bucket (and the local one)
  oriole-s3 lock break --identifier N [--local F]
                                   delete the bucket's lock if it holds identifier N

OrioleDB's lock (`data/orioledb_data/s3_lock`) holds 8 bytes: a little-endian u64 identifier. An
instance writes it at start (PUT If-None-Match: *) and deletes it at a clean stop; the same
identifier is kept in the data directory. A lock left by a dead instance stops any other instance
from starting ("A lock file from a different OrioleDB instance already exists on the S3 bucket",
with both identifiers in the DETAIL line). It is never broken silently: `lock break` needs the
identifier the operator read from that message or from `lock show`.
"""

import argparse
import os
import struct
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

LOCK_KEY = "data/orioledb_data/s3_lock"
PROG = "oriole-s3"


class Fatal(Exception):
    pass


def say(msg):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def env(name, default=None):
    value = os.environ.get(name, "")
    if value:
        return value
    if default is None:
        raise Fatal(f"{name} is not set")
    return default


def client():
    endpoint = env("ORIOLE_S3_ENDPOINT")
    if "://" in endpoint:
        raise Fatal("ORIOLE_S3_ENDPOINT must be host:port, without http://")
    # Only Perch's pair counts: no profile, config file or ambient AWS setting of the container.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    return boto3.client(
        "s3",
        endpoint_url=f"http://{endpoint}",
        region_name=env("ORIOLE_S3_REGION", "us-east-1"),
        aws_access_key_id=env("PERCH_ACCESS_KEY_ID"),
        aws_secret_access_key=env("PERCH_SECRET_ACCESS_KEY"),
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def status_of(e):
    return e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def code_of(e):
    return e.response.get("Error", {}).get("Code", "")


def keys_refused(e):
    return status_of(e) == 403 or code_of(e) in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")


def refused_message(e):
    return (
        f"Perch refused the client keys ({code_of(e) or status_of(e)}): PERCH_ACCESS_KEY_ID / "
        "PERCH_SECRET_ACCESS_KEY here must be the pair perch serve was started with"
    )


def bucket_exists(s3, bucket):
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except ClientError as e:
        if status_of(e) == 404:
            return False
        raise


def cmd_wait(s3, bucket, args):
    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        try:
            bucket_exists(s3, bucket)
            return 0
        except ClientError as e:
            if keys_refused(e):
                say(refused_message(e))
                return 3
            last = f"{code_of(e) or status_of(e)}"
        except BotoCoreError as e:
            last = str(e)
        if time.monotonic() > deadline:
            say(f"Perch at {os.environ.get('ORIOLE_S3_ENDPOINT')} did not answer within {args.timeout:g} s (last: {last})")
            return 1
        time.sleep(1)


def cmd_probe(s3, bucket, args):
    if not bucket_exists(s3, bucket):
        print("missing")
        return 0
    page = s3.list_objects_v2(Bucket=bucket, MaxKeys=1)
    print("has-data" if page.get("KeyCount", 0) > 0 else "empty")
    return 0


def cmd_create_bucket(s3, bucket, args):
    if bucket_exists(s3, bucket):
        say(f"bucket {bucket} exists")
        return 0
    s3.create_bucket(Bucket=bucket)
    say(f"created bucket {bucket}")
    return 0


def cmd_ls(s3, bucket, args):
    totals = {}
    count = 0
    size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=args.prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            top = key.split("/", 1)[0] + ("/" if "/" in key else "")
            n, b = totals.get(top, (0, 0))
            totals[top] = (n + 1, b + obj["Size"])
            count += 1
            size += obj["Size"]
            if args.keys:
                print(f"{obj['Size']:>12}  {key}")
    for top in sorted(totals):
        n, b = totals[top]
        print(f"{n:>8} objects {b:>14} bytes  {top}")
    print(f"{count:>8} objects {size:>14} bytes  total in s3://{bucket}/{args.prefix}")
    return 0


def read_identifier(data, where):
    if len(data) != 8:
        raise Fatal(f"{where} holds {len(data)} bytes, not an 8-byte OrioleDB lock identifier")
    return struct.unpack("<Q", data)[0]


def bucket_lock(s3, bucket):
    try:
        body = s3.get_object(Bucket=bucket, Key=LOCK_KEY)["Body"].read()
    except ClientError as e:
        if status_of(e) == 404:
            return None
        raise
    return read_identifier(body, f"s3://{bucket}/{LOCK_KEY}")


def local_lock(path):
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return read_identifier(f.read(), path)
    except FileNotFoundError:
        return None


def cmd_lock_show(s3, bucket, args):
    remote = bucket_lock(s3, bucket)
    print(f"bucket lock: {remote if remote is not None else 'none'}")
    if args.local:
        mine = local_lock(args.local)
        print(f"local lock:  {mine if mine is not None else 'none'} ({args.local})")
    return 0


def cmd_lock_break(s3, bucket, args):
    wanted = args.identifier
    remote = bucket_lock(s3, bucket)
    if remote is None:
        say(f"no OrioleDB lock in s3://{bucket}: nothing to break (identifier {wanted} was asked for)")
        return 0
    mine = local_lock(args.local)
    if remote == wanted and remote != mine:
        s3.delete_object(Bucket=bucket, Key=LOCK_KEY)
        say(f"broke the OrioleDB lock {remote} in s3://{bucket}, as asked by identifier {wanted}")
        return 0
    if remote == mine:
        say(
            f"the lock in s3://{bucket} ({remote}) is this data directory's own: nothing to break; "
            "remove the break request (ORIOLE_BREAK_S3_LOCK) now that it has served"
        )
        return 0
    say(
        f"refusing to break the lock in s3://{bucket}: it holds {remote}, not {wanted}. Another instance "
        "may have started since; check that no other OrioleDB uses this bucket, then ask again with the "
        "identifier it holds now"
    )
    return 4


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait", help="wait until Perch answers for the bucket")
    w.add_argument("--timeout", type=float, default=120)
    sub.add_parser("probe", help="print missing, empty or has-data")
    sub.add_parser("create-bucket", help="create the bucket if it does not exist")
    ls = sub.add_parser("ls", help="objects and bytes under each top-level prefix")
    ls.add_argument("--prefix", default="")
    ls.add_argument("--keys", action="store_true", help="also print every key")
    lock = sub.add_parser("lock", help="OrioleDB's lock in the bucket")
    lock_sub = lock.add_subparsers(dest="lock_cmd", required=True)
    show = lock_sub.add_parser("show")
    show.add_argument("--local", help="the data directory's lock file, e.g. $PGDATA/orioledb_data/s3_lock")
    brk = lock_sub.add_parser("break")
    brk.add_argument("--identifier", type=int, required=True, help="the identifier the lock must hold")
    brk.add_argument("--local", help="the data directory's lock file, e.g. $PGDATA/orioledb_data/s3_lock")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    commands = {
        "wait": cmd_wait,
        "probe": cmd_probe,
        "create-bucket": cmd_create_bucket,
        "ls": cmd_ls,
    }
    try:
        s3 = client()
        # On Fly, `fly storage create` names the bucket in BUCKET_NAME (fly ssh console sessions see
        # the secrets, not the supervisor's ORIOLE_S3_BUCKET).
        bucket = os.environ.get("ORIOLE_S3_BUCKET") or env("BUCKET_NAME", "") or env("ORIOLE_S3_BUCKET")
        if args.cmd == "lock":
            run = cmd_lock_show if args.lock_cmd == "show" else cmd_lock_break
        else:
            run = commands[args.cmd]
        return run(s3, bucket, args)
    except Fatal as e:
        say(f"error: {e}")
        return 1
    except ClientError as e:
        if keys_refused(e):
            say(f"error: {refused_message(e)}")
            return 3
        say(f"error: {code_of(e) or status_of(e)} from Perch: {e}")
        return 1
    except BotoCoreError as e:
        say(f"error: cannot reach Perch: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
