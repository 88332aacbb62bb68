#!/usr/bin/env python3
"""s3-trace-proxy: a logging HTTP proxy put between an S3 client (OrioleDB) and Perch; it records
one JSON line per request, in the format of the recorded OrioleDB traces (../shared/oriole):
method, host, path, query, the request's header names and conditional headers, body sizes and
SHA-256, status, response size and ETag, duration. Secrets never reach the file: of the
Authorization header only the algorithm, the signed headers and the scope are kept.

The request is forwarded byte for byte (the Host header too, so SigV4 signatures still verify);
`Expect: 100-continue` is answered by the proxy before it reads the body.

Usage: s3-trace-proxy.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --out FILE.jsonl
       [--phase NAME]   (SIGUSR1 rereads the phase name from FILE.phase, if it exists)
"""

import argparse
import hashlib
import http.client
import http.server
import json
import os
import signal
import socketserver
import sys
import threading
import time
from datetime import datetime, timezone

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}


class Recorder:
    """Appends JSON lines to the trace file, one writer at a time."""

    def __init__(self, path, phase):
        self.path = path
        self.phase = phase
        self.lock = threading.Lock()
        self.file = open(path, "a", buffering=1, encoding="utf-8")

    def write(self, record):
        record["phase"] = self.phase
        line = json.dumps(record, separators=(",", ":"))
        with self.lock:
            self.file.write(line + "\n")

    def reload_phase(self):
        phase_file = self.path + ".phase"
        if os.path.exists(phase_file):
            with open(phase_file, encoding="utf-8") as f:
                self.phase = f.read().strip() or self.phase


def redacted_authorization(value):
    """The algorithm, signed headers and scope of a SigV4 Authorization header; never the
    signature or the access key."""
    algo, _, rest = value.partition(" ")
    out = {"algo": algo}
    for part in rest.split(","):
        name, _, val = part.strip().partition("=")
        if name == "SignedHeaders":
            out["signed_headers"] = val
        elif name == "Credential":
            out["scope"] = val.partition("/")[2]
    return out


def make_handler(recorder, upstream_host, upstream_port):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

        def relay(self):
            started = time.time()
            header_names = list(self.headers.keys())
            req_headers = {}
            for name, value in self.headers.items():
                lower = name.lower()
                if lower == "authorization":
                    req_headers["authorization(redacted)"] = redacted_authorization(value)
                elif lower.startswith("x-amz-security-token"):
                    req_headers[lower + "(redacted)"] = True
                else:
                    req_headers[lower] = value
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            body_read_ms = (time.time() - started) * 1000
            record = {
                "event": "request",
                "ts": datetime.fromtimestamp(started, timezone.utc).isoformat(),
                "t": started,
                "method": self.command,
                "host": self.headers.get("Host"),
                "path": self.path.partition("?")[0],
                "query": self.path.partition("?")[2],
                "req_header_names": header_names,
                "req_headers": req_headers,
                "if_none_match": self.headers.get("If-None-Match"),
                "if_match": self.headers.get("If-Match"),
                "range": self.headers.get("Range"),
                "req_body_bytes": len(body),
                "req_body_sha256": hashlib.sha256(body).hexdigest() if body else None,
                "body_read_ms": round(body_read_ms, 3),
            }
            try:
                conn = http.client.HTTPConnection(upstream_host, upstream_port, timeout=300)
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() in HOP_BY_HOP or name.lower() == "expect":
                        continue
                    conn.putheader(name, value)
                conn.endheaders(body if body else None)
                origin_started = time.time()
                resp = conn.getresponse()
                resp_body = resp.read()
                origin_ms = (time.time() - origin_started) * 1000
                status = resp.status
                resp_headers = resp.getheaders()
                conn.close()
            except (OSError, http.client.HTTPException) as e:
                record.update({"status": None, "error": str(e), "duration_ms": (time.time() - started) * 1000})
                recorder.write(record)
                self.send_error(502, "upstream failed")
                return
            self.send_response_only(status)
            for name, value in resp_headers:
                if name.lower() in HOP_BY_HOP or name.lower() == "content-length":
                    continue
                self.send_header(name, value)
            if self.command != "HEAD" or not any(n.lower() == "content-length" for n, _ in resp_headers):
                self.send_header("Content-Length", str(len(resp_body)))
            else:
                self.send_header("Content-Length", dict((n.lower(), v) for n, v in resp_headers)["content-length"])
            self.end_headers()
            if self.command != "HEAD" and resp_body:
                self.wfile.write(resp_body)
            lower_headers = {n.lower(): v for n, v in resp_headers}
            record.update(
                {
                    "status": status,
                    "resp_body_bytes": len(resp_body),
                    "resp_etag": lower_headers.get("etag"),
                    "resp_x_cache": lower_headers.get("x-cache"),
                    "resp_error_code": _error_code(resp_body) if status >= 300 else None,
                    "origin_ms": round(origin_ms, 3),
                    "duration_ms": round((time.time() - started) * 1000, 3),
                }
            )
            recorder.write(record)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay

    return Handler


def _error_code(body):
    start = body.find(b"<Code>")
    end = body.find(b"</Code>")
    if start < 0 or end < 0:
        return None
    return body[start + 6 : end].decode("utf-8", "replace")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--phase", default="run")
    args = p.parse_args(argv)
    lhost, lport = args.listen.rsplit(":", 1)
    uhost, uport = args.upstream.rsplit(":", 1)
    recorder = Recorder(args.out, args.phase)
    signal.signal(signal.SIGUSR1, lambda *_: recorder.reload_phase())
    server = Server((lhost, int(lport)), make_handler(recorder, uhost, int(uport)))
    print(f"s3-trace-proxy: {args.listen} -> {args.upstream}, recording to {args.out}", file=sys.stderr)
    server.serve_forever()


if __name__ == "__main__":
    main()
