#!/usr/bin/env bash
# Runs every Perch test: clippy, the Rust suites (unit and integration, against the real perch binary and
# a moto S3 server they start themselves) and the boto3 suite. Usage: ./test.sh
set -euo pipefail
cd "$(dirname "$0")"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# Python test tools (moto's S3 server, boto3, pytest); quick when already installed.
requirements=gateway/tests/python/requirements.txt
python3 -m pip install -q --disable-pip-version-check -r "$requirements" 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages -r "$requirements"
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

# Lints first (fast, and a finding fails the run): the same release profile as the tests, so
# RocksDB's C++ is not built a second time.
cargo clippy --release --workspace --all-targets --locked -- -D warnings
cargo test --release --workspace --locked
PERCH_BIN="$CARGO_TARGET_DIR/release/perch" python3 -m pytest -q gateway/tests/python
