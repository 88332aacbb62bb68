#!/usr/bin/env python3
"""Builds standby-shaped.jsonl: what a replica OrioleDB sends to S3 when it starts from a seeded
checkpoint, reads the tables, writes a restartpoint and stops, assembled from the recorded traces
of a real OrioleDB (docs/replicas.md, section "The standby trace"). Usage:

    python3 bench/traces/make_standby_shaped.py /work/shared/oriole > bench/traces/standby-shaped.jsonl

Phases taken, in order: trace-d3 (start on a restored copy: lock PUT with If-None-Match, control
GET, part GETs), trace-e1 (a checkpoint's writes), trace-e2 (a clean stop's writes and the lock
DELETE). WAL PUTs are left out: a standby does not archive (archive_mode = on archives only on a
primary). Each line: method, key, if_none_match, body_bytes (the PUT body's size), and what the
real S3 answered: status and resp_body_bytes (a GET's object size).
"""
import json
import sys

PHASES = ["trace-d3-restore-start-query.jsonl", "trace-e1-create-index-checkpoint.jsonl", "trace-e2-stop.jsonl"]


def main(folder):
    for phase in PHASES:
        for line in open(f"{folder}/{phase}"):
            r = json.loads(line)
            if r.get("event") != "request":
                continue
            key = r["path"].lstrip("/")
            if key.startswith("wal/"):
                continue
            print(json.dumps({
                "phase": phase.removeprefix("trace-").removesuffix(".jsonl"),
                "method": r["method"],
                "key": key,
                "if_none_match": r["req_headers"].get("if-none-match"),
                "body_bytes": r["req_body_bytes"],
                "status": r["status"],
                "resp_body_bytes": r["resp_body_bytes"],
            }, separators=(",", ":")))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/oriole")
