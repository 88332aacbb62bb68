#!/usr/bin/env bash
# Renders perch-s3.conf, the part of OrioleDB's configuration that comes from the environment, and
# checks that environment first. Called by the entrypoint at every start; kept separate so that it
# can be tested without Docker (gateway/tests/python/test_deploy_files.py).
#
# Usage:
#   render-config.sh --check   validate the environment only; write nothing
#   render-config.sh FILE      validate, then write FILE (mode 0600, replaced atomically)
#
# Required:
#   ORIOLE_S3_ENDPOINT        host:port of Perch's S3 listener, e.g. localhost:9000 or perch:9000
#                             (plain http; a host name without dots, see below)
#   ORIOLE_S3_BUCKET          the bucket holding the database (orioledb.s3_prefix: path style)
#   PERCH_ACCESS_KEY_ID       Perch's client key pair, the one `perch serve` is started with
#   PERCH_SECRET_ACCESS_KEY
#   PGDATA                    the data directory (set by the image)
# Optional:
#   ORIOLE_S3_REGION          region in OrioleDB's signatures (default us-east-1; Perch ignores it)
#   ORIOLE_S3_DESIRED_SIZE    orioledb.s3_desired_size: local data OrioleDB keeps before evicting
#                             to S3, e.g. 6GB (default: OrioleDB's, 10000MB)
#   ORIOLE_STANDBY            true on a read replica (beside a Perch with --role replica): the
#                             server is a standby whose restore_command fetches the primary's
#                             archived WAL through Perch, `perch wal fetch` (docs/replicas.md)
#
# A missing or malformed variable is an error naming it. Nothing here prints a secret: the secret
# key goes to FILE only, and messages never quote it.
set -euo pipefail

prog=perch-oriole-render-config
errors=()

err() { errors+=("$1"); }

# required NAME HELP: records an error when NAME is unset or empty.
required() {
    if [ -z "${!1:-}" ]; then
        err "$1 is not set: $2"
    fi
}

# pg_quote VALUE: VALUE as a postgresql.conf string literal (quote and backslash escaped).
pg_quote() {
    local v=$1
    v=${v//\\/\\\\}
    v=${v//\'/\'\'}
    printf "'%s'" "$v"
}

check_env() {
    required ORIOLE_S3_ENDPOINT "the host:port of Perch's S3 listener, e.g. localhost:9000"
    required ORIOLE_S3_BUCKET "the bucket that holds the database, e.g. orioledb"
    required PERCH_ACCESS_KEY_ID "Perch's client access key (the PERCH_ACCESS_KEY_ID perch serve runs with)"
    required PERCH_SECRET_ACCESS_KEY "Perch's client secret key (the PERCH_SECRET_ACCESS_KEY perch serve runs with)"
    required PGDATA "the data directory, e.g. /var/lib/postgresql/data/pgdata"

    local endpoint=${ORIOLE_S3_ENDPOINT:-}
    if [ -n "$endpoint" ]; then
        case $endpoint in
            http://* | https://*)
                err "ORIOLE_S3_ENDPOINT must be host:port without a scheme (got '$endpoint'): OrioleDB reaches Perch over plain http (orioledb.s3_use_https = off)"
                ;;
            *)
                local host=${endpoint%:*} port=${endpoint##*:}
                if [ "$host" = "$endpoint" ] || [ -z "$host" ] || ! [[ $port =~ ^[0-9]+$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
                    err "ORIOLE_S3_ENDPOINT must be host:port, e.g. localhost:9000 (got '$endpoint')"
                elif ! [[ $host =~ ^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$ ]]; then
                    # OrioleDB's restore tool reads the first label of a dotted host as a bucket
                    # name (it tries virtual-hosted style first) and then fails, so an address such
                    # as 127.0.0.1 or perch.internal would only break on the day a restore is needed.
                    err "ORIOLE_S3_ENDPOINT's host must be a name without dots, such as localhost or perch (got '$host'): OrioleDB's restore tool takes the first label of a dotted host for a bucket name"
                fi
                ;;
        esac
    fi

    local bucket=${ORIOLE_S3_BUCKET:-}
    if [ -n "$bucket" ] && ! [[ $bucket =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]]; then
        err "ORIOLE_S3_BUCKET must be an S3 bucket name (3 to 63 of a-z, 0-9, '.', '-'; got '$bucket')"
    fi

    local region=${ORIOLE_S3_REGION:-us-east-1}
    if ! [[ $region =~ ^[a-z0-9-]+$ ]]; then
        err "ORIOLE_S3_REGION must look like a region name, e.g. us-east-1 or auto (got '$region')"
    fi

    local size=${ORIOLE_S3_DESIRED_SIZE:-}
    if [ -n "$size" ] && ! [[ $size =~ ^[0-9]+(MB|GB|TB)?$ ]]; then
        err "ORIOLE_S3_DESIRED_SIZE must be a size such as 6GB or 6144MB (got '$size')"
    fi

    # Key material goes into a quoted literal; a control character would end the line.
    local name
    for name in PERCH_ACCESS_KEY_ID PERCH_SECRET_ACCESS_KEY; do
        if [[ ${!name:-} =~ [[:cntrl:]] ]]; then
            err "$name contains a control character (its value is not shown)"
        fi
    done

    case ${ORIOLE_STANDBY:-false} in
        true | false) ;;
        *) err "ORIOLE_STANDBY must be true or false (got '${ORIOLE_STANDBY}')" ;;
    esac
    local dir=${PGDATA:-}
    if [ -n "$dir" ] && [[ $dir != /* ]]; then
        err "PGDATA must be an absolute path (got '$dir')"
    fi

    if [ "${#errors[@]}" -gt 0 ]; then
        local e
        for e in "${errors[@]}"; do
            printf '%s: error: %s\n' "$prog" "$e" >&2
        done
        return 1
    fi
}

render() {
    local dir=${PGDATA%/}
    printf '# Rendered from the environment by %s at container start; do not edit.\n' "$prog"
    printf '# Holds Perch'"'"'s client secret key: mode 0600, outside the data volume, never logged.\n'
    printf 'data_directory = %s\n' "$(pg_quote "$dir")"
    printf 'hba_file = %s\n' "$(pg_quote "$dir/pg_hba.conf")"
    printf 'ident_file = %s\n' "$(pg_quote "$dir/pg_ident.conf")"
    printf 'orioledb.s3_host = %s\n' "$(pg_quote "$ORIOLE_S3_ENDPOINT")"
    printf 'orioledb.s3_region = %s\n' "$(pg_quote "${ORIOLE_S3_REGION:-us-east-1}")"
    printf 'orioledb.s3_prefix = %s\n' "$(pg_quote "$ORIOLE_S3_BUCKET")"
    printf 'orioledb.s3_accesskey = %s\n' "$(pg_quote "$PERCH_ACCESS_KEY_ID")"
    printf 'orioledb.s3_secretkey = %s\n' "$(pg_quote "$PERCH_SECRET_ACCESS_KEY")"
    if [ -n "${ORIOLE_S3_DESIRED_SIZE:-}" ]; then
        printf 'orioledb.s3_desired_size = %s\n' "$(pg_quote "$ORIOLE_S3_DESIRED_SIZE")"
    fi
    if [ "${ORIOLE_STANDBY:-false}" = true ]; then
        # A read replica replays the WAL the primary archived to the bucket, fetched through the
        # replica's Perch; an absent segment fails at once and Postgres polls again after
        # wal_retrieve_retry_interval (docs/replicas.md).
        printf 'restore_command = %s\n' \
            "$(pg_quote "perch wal fetch --endpoint http://$ORIOLE_S3_ENDPOINT --bucket $ORIOLE_S3_BUCKET %f %p")"
    fi
}

main() {
    case ${1:-} in
        --check)
            check_env
            ;;
        "" | -*)
            printf 'usage: %s --check | FILE\n' "$0" >&2
            return 2
            ;;
        *)
            local out=$1 tmp
            check_env
            umask 077
            tmp=$(mktemp "${out}.XXXXXX")
            # Never to stdout: the file holds the secret key.
            render >"$tmp"
            mv -f "$tmp" "$out"
            printf '%s: wrote %s (OrioleDB -> http://%s, bucket %s, key id %s)\n' \
                "$prog" "$out" "$ORIOLE_S3_ENDPOINT" "$ORIOLE_S3_BUCKET" "$PERCH_ACCESS_KEY_ID" >&2
            ;;
    esac
}

main "$@"
