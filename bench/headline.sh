#!/usr/bin/env bash
# The headline benchmarks of docs/benchmarks.md in one go, to check a change for regressions: cache
# hits beside nginx (signed GETs, keep-alive and a new connection per request), the PUT
# acknowledgement beside a plain write + fsync and direct, and the OrioleDB trace replays through
# Perch beside direct, each against moto behind the origin proxy where docs/benchmarks.md says so.
#
#   bench/headline.sh OUT_DIR          (about 10 minutes on 2 vCPUs; run it on a quiet machine)
#
# Needs moto_server and nginx on PATH, and the release binaries (built here with the workspace's
# package set, as ./test.sh builds them, so nothing is built twice).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked --workspace --all-targets
bin=$CARGO_TARGET_DIR/release
traces=${PERCH_TRACES:-../shared/oriole}

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 100); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# 1. Hits beside nginx.
moto_server -H 127.0.0.1 -p 47001 >"$out/moto-hits.log" 2>&1 &
pids+=($!)
wait_port 47001
PERCH_ORIGIN_ACCESS_KEY_ID=test PERCH_ORIGIN_SECRET_ACCESS_KEY=test PERCH_LOG=warn \
    "$bin/perch" serve --listen 127.0.0.1:47002 --admin-listen 127.0.0.1:47003 \
    --data-dir "$out/hits-perch" --origin http://127.0.0.1:47001 --origin-region us-east-1 \
    >"$out/perch-hits.log" 2>&1 &
pids+=($!)
wait_port 47002
for mode in pool new; do
    "$bin/perch-bench" compare-nginx --perch http://127.0.0.1:47002 --perch-admin 127.0.0.1:47003 \
        --origin http://127.0.0.1:47001 --nginx-duration 3s --nginx-sizes 64KiB,1MiB --nginx-signed \
        --nginx-connection "$mode" --out "$out/hits-$mode"
done

# 2. The PUT acknowledgement (it starts its own servers).
"$bin/perch-bench" put-latency --sizes-mib 1,16 --rounds 3 --out "$out/put"

# 3. The OrioleDB trace replays, origin at +20 ms.
moto_server -H 127.0.0.1 -p 47011 >"$out/moto-trace.log" 2>&1 &
pids+=($!)
wait_port 47011
"$bin/perch-bench" origin-proxy --listen 127.0.0.1:47012 --upstream http://127.0.0.1:47011 \
    --latency-ms 20 --new-conn-rtts 2 >"$out/proxy.log" 2>&1 &
pids+=($!)
wait_port 47012
PERCH_ORIGIN_ACCESS_KEY_ID=testing PERCH_ORIGIN_SECRET_ACCESS_KEY=testing PERCH_LOG=warn \
    "$bin/perch" serve --listen 127.0.0.1:47013 --admin-listen 127.0.0.1:47014 \
    --data-dir "$out/trace-perch" --origin http://127.0.0.1:47012 --origin-region us-east-1 \
    >"$out/perch-trace.log" 2>&1 &
pids+=($!)
wait_port 47013
"$bin/perch-bench" run --workload trace --oriole --rounds 3 --trace "$traces" --setup --origin-target direct \
    --target perch=http://127.0.0.1:47013,admin=127.0.0.1:47014 --target direct=http://127.0.0.1:47012 \
    --out "$out/trace"
echo "results in $out"
