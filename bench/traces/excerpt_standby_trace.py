#!/usr/bin/env python3
"""Builds standby-real.jsonl, an excerpt of what a real OrioleDB standby sent to its replica Perch,
from the full recording that bench/replica-lag.sh makes through bench/s3-trace-proxy.py
(docs/replicas.md, "A real standby's traffic"). Usage:

    python3 bench/traces/excerpt_standby_trace.py /var/tmp/standby-run/standby-trace.jsonl \
        > bench/traces/standby-real.jsonl

One line per request, with the fields of standby-shaped.jsonl (phase, method, key, if_none_match,
body_bytes, status, resp_body_bytes) so the same replay reads both, and a few more: t (seconds
since the first request), query, range, signed (the SigV4 signed headers), x_cache and
error_code (the answer's). No secret is in the recording (of Authorization the proxy keeps only
the algorithm, signed headers and scope) nor here.

Every request is kept except the standby's idle polling: of each run of WAL polls that found
nothing (a GET of the next segment and one of the next timeline's .history, both 404, every
wal_retrieve_retry_interval), the first POLL_PAIRS_KEPT pairs are kept.
"""
import json
import sys

POLL_PAIRS_KEPT = 1
BUCKET = "orioledb"


def key_of(r):
    path = r["path"].lstrip("/")
    return "" if path == BUCKET else path.removeprefix(BUCKET + "/")


def is_empty_poll(r):
    return r["method"] == "GET" and r["status"] == 404 and key_of(r).startswith("wal/")


def main(path):
    run = 0
    start = None
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        if r.get("event") != "request":
            continue
        if start is None:
            start = r["t"]
        if is_empty_poll(r):
            run += 1
            if run > 2 * POLL_PAIRS_KEPT:
                continue
        else:
            run = 0
        auth = r["req_headers"].get("authorization(redacted)") or {}
        print(json.dumps({
            "phase": r["phase"],
            "t": round(r["t"] - start, 3),
            "method": r["method"],
            "key": key_of(r),
            "query": r["query"],
            "if_none_match": r.get("if_none_match"),
            "range": r.get("range"),
            "body_bytes": r["req_body_bytes"],
            "status": r["status"],
            "resp_body_bytes": r.get("resp_body_bytes"),
            "x_cache": r.get("resp_x_cache"),
            "error_code": r.get("resp_error_code"),
            "signed": auth.get("signed_headers"),
        }, separators=(",", ":")))


if __name__ == "__main__":
    main(sys.argv[1])
