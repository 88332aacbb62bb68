#!/usr/bin/env bash
# Build-time setup of Perch's OrioleDB image, on top of the official OrioleDB image (Ubuntu
# flavour). Run as root by oriole-image/Dockerfile and by fly/Dockerfile, from a copy of this
# directory:
#   - a Python virtualenv with boto3 (the restore tool and the oriole-s3 helper need it; the
#     upstream image removes Python after building);
#   - the restore tool, restore.py (OrioleDB's orioledb_s3_loader.py fixed and made parallel; the
#     upstream image does not ship a loader at all), the entrypoint, the config renderer, the
#     oriole-s3 helper and postgresql.conf.
set -euo pipefail

tools=/opt/perch-oriole
boto3_version=1.43.11

main() {
    local here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates curl python3 python3-venv
    rm -rf /var/lib/apt/lists/*

    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --no-cache-dir --disable-pip-version-check \
        "boto3==$boto3_version"

    install -m 0755 "$here/restore.py" "$tools/restore.py"
    install -m 0755 "$here/render-config.sh" "$tools/render-config.sh"
    install -m 0755 "$here/oriole_s3.py" "$tools/oriole_s3.py"
    install -m 0755 "$here/entrypoint.sh" /usr/local/bin/perch-oriole-entrypoint
    printf '#!/bin/sh\nexec %s/venv/bin/python3 %s/oriole_s3.py "$@"\n' "$tools" "$tools" >/usr/local/bin/oriole-s3
    chmod 0755 /usr/local/bin/oriole-s3
    install -o postgres -g postgres -m 0600 "$here/postgresql.conf" /etc/postgresql/postgresql.conf
    # The rendered part (with Perch's secret key) is written at start by the postgres user.
    install -d -o postgres -g postgres -m 0700 /etc/postgresql

    # Smoke checks of what was installed.
    "$tools/venv/bin/python3" -c 'import boto3'
    "$tools/venv/bin/python3" "$tools/restore.py" --help >/dev/null
    "$tools/venv/bin/python3" "$tools/oriole_s3.py" --help >/dev/null
    bash -n /usr/local/bin/perch-oriole-entrypoint
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
