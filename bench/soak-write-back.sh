#!/usr/bin/env bash
# The long version of the write-back crash test: random PUTs, overwrites and DELETEs through the
# real perch in front of moto, kill -9 at random moments ROUNDS times, then a flush and a check
# that every key holds its last acknowledged version, in perch and in the origin.
#
#   bench/soak-write-back.sh [ROUNDS]      (default 200; CI runs 6 of them in ./test.sh)
#
# Needs what ./test.sh needs (moto_server on PATH, a Rust toolchain). About 1.5 s per round.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
case $rounds in
'' | *[!0-9]*)
    echo "usage: $0 [ROUNDS]" >&2
    exit 2
    ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
PERCH_CRASH_ROUNDS=$rounds exec cargo test --release --locked --workspace --test s3 \
    -- --exact write_back::kill_9_at_random_moments_loses_no_acknowledged_write --nocapture
