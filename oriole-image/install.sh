#!/usr/bin/env bash
# Build-time setup of Perch's OrioleDB image, on top of the official OrioleDB image (Ubuntu
# flavour). Run as root by oriole-image/Dockerfile and by fly/Dockerfile, from a copy of this
# directory:
#   - a Python virtualenv with boto3 and testgres (OrioleDB's restore tool needs both; the
#     upstream image removes Python after building);
#   - OrioleDB's restore tool, orioledb_s3_loader.py, fetched from the OrioleDB git tag of the
#     release the image runs (the upstream image does not ship it), then patched (patch-loader.sh);
#   - the entrypoint, the config renderer, the oriole-s3 helper and postgresql.conf.
#
# ORIOLEDB_LOADER_REF: the git ref of github.com/orioledb/orioledb to take the restore tool from;
# `auto` (the default) reads the release from `postgres --version` ("OrioleDB beta 16" -> beta16).
set -euo pipefail

tools=/opt/perch-oriole
boto3_version=1.43.11
testgres_version=1.17.1

# loader_ref_from_version "postgres (PostgreSQL) 17.5 OrioleDB beta 16 PGTAG=..." -> beta16
loader_ref_from_version() {
    local n
    n=$(printf '%s\n' "$1" | sed -nE 's/.*OrioleDB (public )?beta ([0-9]+).*/\2/p' | head -n1)
    if [ -z "$n" ]; then
        echo "install: cannot tell the OrioleDB release from '$1'; build with --build-arg ORIOLEDB_LOADER_REF=<tag>, e.g. beta16" >&2
        return 1
    fi
    printf 'beta%s\n' "$n"
}

main() {
    local here ref
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates curl python3 python3-venv
    rm -rf /var/lib/apt/lists/*

    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --no-cache-dir --disable-pip-version-check \
        "boto3==$boto3_version" "testgres==$testgres_version"

    ref=${ORIOLEDB_LOADER_REF:-auto}
    if [ "$ref" = auto ]; then
        ref=$(loader_ref_from_version "$(postgres --version)")
    fi
    echo "install: OrioleDB restore tool from orioledb/orioledb@$ref"
    curl -fsSL --retry 3 -o "$tools/orioledb_s3_loader.py" \
        "https://raw.githubusercontent.com/orioledb/orioledb/$ref/orioledb_s3_loader.py"
    "$here/patch-loader.sh" "$tools/orioledb_s3_loader.py"
    "$tools/venv/bin/python3" -m py_compile "$tools/orioledb_s3_loader.py"
    printf '%s\n' "$ref" >"$tools/orioledb_s3_loader.ref"

    install -m 0755 "$here/render-config.sh" "$tools/render-config.sh"
    install -m 0755 "$here/oriole_s3.py" "$tools/oriole_s3.py"
    install -m 0755 "$here/entrypoint.sh" /usr/local/bin/perch-oriole-entrypoint
    printf '#!/bin/sh\nexec %s/venv/bin/python3 %s/oriole_s3.py "$@"\n' "$tools" "$tools" >/usr/local/bin/oriole-s3
    chmod 0755 /usr/local/bin/oriole-s3
    install -o postgres -g postgres -m 0600 "$here/postgresql.conf" /etc/postgresql/postgresql.conf
    # The rendered part (with Perch's secret key) is written at start by the postgres user.
    install -d -o postgres -g postgres -m 0700 /etc/postgresql

    # Smoke checks of what was installed.
    "$tools/venv/bin/python3" -c 'import boto3, testgres'
    "$tools/venv/bin/python3" "$tools/oriole_s3.py" --help >/dev/null
    bash -n /usr/local/bin/perch-oriole-entrypoint
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
