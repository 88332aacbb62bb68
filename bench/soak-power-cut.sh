#!/usr/bin/env bash
# The long version of the power-cut soak: perch on the power-cut filesystem (bench/powercut) under
# an OrioleDB-shaped workload, CUTS power cuts at random moments (every third one after a kill at
# a commit fail point), a restart on what survived after each, then a flush and a check that every
# key holds its last acknowledged state in perch and in the origin, and that no barrier reached
# the origin before the data of its checkpoint.
#
#   bench/soak-power-cut.sh [CUTS] [FIRST_SEED]     (default 200 from seed 1; CI runs 20)
#
# Needs root and /dev/fuse, and what ./test.sh needs. About 3 s per cut. A failing cut names its
# seed; `bench/soak-power-cut.sh 1 SEED` replays that cut's decisions.
set -euo pipefail
cd "$(dirname "$0")/.."
cuts=${1:-200}
seed=${2:-1}
case $cuts$seed in
'' | *[!0-9]*)
    echo "usage: $0 [CUTS] [FIRST_SEED]" >&2
    exit 2
    ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# The same package set as ./test.sh, so nothing is built twice with other features.
cargo build --release --locked --workspace --all-targets
PERCH_POWER_CUTS=$cuts PERCH_POWER_SEED=$seed exec cargo test --release --locked --workspace --test s3 \
    -- --exact power_cut::power_cuts_lose_nothing_acknowledged_and_keep_barrier_order --nocapture
