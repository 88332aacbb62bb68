#!/usr/bin/env bash
# perch-oriole-entrypoint: starts OrioleDB in S3 mode with Perch as its S3 endpoint, then hands over
# to the upstream image's docker-entrypoint.sh (which runs initdb on a new database and execs
# postgres).
#
# At every start, before the server:
#   1. checks the environment and renders /etc/postgresql/perch-s3.conf (render-config.sh);
#   2. waits until Perch answers for the bucket;
#   3. if ORIOLE_BREAK_S3_LOCK=<identifier> is set, breaks OrioleDB's lock in the bucket, but only
#      if it holds exactly that identifier (the explicit way to clear a lock left by a dead
#      instance; see docs/deploy-fly.md, "A stale lock");
#   4. if the data directory is empty: when the bucket already holds a database, restores it with
#      the image's restore tool (restore.py: OrioleDB's loader, fixed and parallel) instead of
#      running initdb, and says so; when
#      the bucket is empty (or missing and ORIOLE_CREATE_BUCKET=true), lets initdb create a new one.
#
# Environment: see render-config.sh for the required variables. Also:
#   ORIOLE_CREATE_BUCKET=true   create a missing bucket (the local compose stack); default: a missing
#                               bucket is an error (on Fly the bucket comes from `fly storage create`)
#   ORIOLE_BREAK_S3_LOCK=N      break the bucket's lock if it holds identifier N (see step 3)
#   ORIOLE_S3_WAIT=S            how long to wait for Perch (default 120 s)
#   ORIOLE_STANDBY=true         a read replica: the data directory is restored from the primary's
#                               bucket (never initialized) and started as a standby
#                               (standby.signal) that replays the primary's archived WAL
#                               (docs/replicas.md)
# For tests (defaults are the image's paths): ORIOLE_RUN_AS (user to drop to when started as root,
# empty: stay), ORIOLE_TOOLS_DIR, ORIOLE_CONF_FILE, ORIOLE_UPSTREAM_ENTRYPOINT.
#
# Any command other than `postgres ...` (bash, psql, oriole-s3 ...) is run as given; options alone
# (`-c work_mem=64MB`) are options of postgres, as with the upstream image.
# Nothing here prints a secret.
set -Eeuo pipefail

tools_dir=${ORIOLE_TOOLS_DIR:-/opt/perch-oriole}
conf_file=${ORIOLE_CONF_FILE:-/etc/postgresql/perch-s3.conf}
upstream=${ORIOLE_UPSTREAM_ENTRYPOINT:-docker-entrypoint.sh}
run_as=${ORIOLE_RUN_AS-postgres}
restore_marker_name=.perch-restore-in-progress

say() { printf 'perch-oriole: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# A stop (docker stop, the Fly supervisor) can come while this script waits for Perch or restores:
# long steps run in the background (run_child) so that the signal is acted on at once.
child=
on_stop() {
    say "got SIG$1 before the server started: stopping"
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    exit 1
}
run_child() {
    local rc=0
    "$@" &
    child=$!
    wait "$child" || rc=$?
    child=
    return "$rc"
}

# The helper that talks to the bucket through Perch (oriole_s3.py, installed as oriole-s3).
s3() { "$tools_dir/venv/bin/python3" "$tools_dir/oriole_s3.py" "$@"; }

render_config() {
    "$tools_dir/render-config.sh" "$@"
}

# pgdata_state: `database`, `empty`, `interrupted-restore` or `unknown`.
pgdata_state() {
    if [ -e "$PGDATA/$restore_marker_name" ]; then
        echo interrupted-restore
    elif [ -s "$PGDATA/PG_VERSION" ]; then
        echo database
    elif [ ! -d "$PGDATA" ] || [ -z "$(ls -A "$PGDATA")" ]; then
        echo empty
    else
        echo unknown
    fi
}

wait_for_perch() {
    local rc=0
    run_child s3 wait --timeout "${ORIOLE_S3_WAIT:-120}" || rc=$?
    case $rc in
        0) ;;
        3) die "Perch refused OrioleDB's keys; set the same PERCH_ACCESS_KEY_ID / PERCH_SECRET_ACCESS_KEY for both" ;;
        *) die "Perch at $ORIOLE_S3_ENDPOINT is not answering; is it running (its /readyz)?" ;;
    esac
}

break_lock_if_asked() {
    local id=${ORIOLE_BREAK_S3_LOCK:-}
    [ -n "$id" ] || return 0
    [[ $id =~ ^[0-9]+$ ]] || die "ORIOLE_BREAK_S3_LOCK must be the lock identifier, a decimal number (got '$id')"
    say "ORIOLE_BREAK_S3_LOCK is set: breaking OrioleDB's lock in bucket $ORIOLE_S3_BUCKET if it holds $id"
    s3 lock break --identifier "$id" --local "$PGDATA/orioledb_data/s3_lock" ||
        die "the lock was not broken (see above); unset ORIOLE_BREAK_S3_LOCK or give the identifier the bucket holds"
}

# The restore tool reads its credentials from the environment; it gets Perch's client pair (never on
# a command line) and none of the container's other AWS settings. It writes only into PGDATA (it
# runs from there all the same).
loader_process() {
    local pg_bin
    pg_bin=$(dirname "$(command -v pg_controldata || echo /usr/local/bin/pg_controldata)")
    unset AWS_PROFILE AWS_SESSION_TOKEN AWS_REGION PG_CONFIG
    export AWS_ACCESS_KEY_ID=$PERCH_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$PERCH_SECRET_ACCESS_KEY
    export AWS_DEFAULT_REGION=${ORIOLE_S3_REGION:-us-east-1} PG_BIN=$pg_bin
    cd "$PGDATA"
    exec "$tools_dir/venv/bin/python3" "$tools_dir/restore.py" \
        --endpoint "http://$ORIOLE_S3_ENDPOINT" --bucket "$ORIOLE_S3_BUCKET" --data-dir "$PGDATA"
}

run_loader() {
    run_child loader_process
}

restore_from_bucket() {
    say "the data directory $PGDATA is empty and bucket $ORIOLE_S3_BUCKET holds a database: restoring it with the restore tool instead of running initdb"
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    : >"$PGDATA/$restore_marker_name"
    local started=$SECONDS
    if ! run_loader; then
        die "the restore from bucket $ORIOLE_S3_BUCKET failed (see above); the data directory is marked as an unfinished restore and will be cleared and restored again at the next start"
    fi
    local f
    for f in PG_VERSION global/pg_control orioledb_data/control; do
        [ -s "$PGDATA/$f" ] || die "the restore tool finished but $PGDATA/$f is missing: bucket $ORIOLE_S3_BUCKET holds no complete checkpoint; refusing to start"
    done
    if [ ! -e "$PGDATA/pg_hba.conf" ]; then
        say "the restored data directory has no pg_hba.conf; writing the image's default (local trust, scram-sha-256 over TCP)"
        printf 'local all all trust\nhost all all all scram-sha-256\n' >"$PGDATA/pg_hba.conf"
    fi
    rm -f "$PGDATA/$restore_marker_name"
    say "restored the database from bucket $ORIOLE_S3_BUCKET in $((SECONDS - started)) s; starting it"
}

prepare_data_dir() {
    local state probe
    state=$(pgdata_state)
    case $state in
        database)
            probe=$(s3 probe) || die "cannot list bucket $ORIOLE_S3_BUCKET through Perch (see above)"
            # A database's bucket is never empty once initdb is done (its first checkpoint is
            # there), so a missing or empty bucket means another bucket or origin than the
            # database's: OrioleDB would accept an empty one and go on from there.
            case $probe in
                missing) die "the data directory $PGDATA holds a database but bucket $ORIOLE_S3_BUCKET does not exist at Perch's origin: was the bucket deleted, or Perch pointed at another origin? Refusing to start" ;;
                empty) die "the data directory $PGDATA holds a database but bucket $ORIOLE_S3_BUCKET is empty: this database is not in that bucket (another bucket, or Perch pointed at another origin?). Refusing to start; to begin again with this bucket, empty the data directory" ;;
            esac
            say "the data directory $PGDATA holds a database: starting it"
            return 0
            ;;
        unknown)
            die "the data directory $PGDATA is neither empty nor a database (no PG_VERSION): move its contents away, then start again (an empty data directory is restored from the bucket or initialized)"
            ;;
        interrupted-restore)
            say "a previous restore into $PGDATA did not finish: clearing what it wrote (it all came from the bucket) and restoring again"
            find "$PGDATA" -mindepth 1 -delete
            ;;
    esac

    probe=$(s3 probe) || die "cannot list bucket $ORIOLE_S3_BUCKET through Perch (see above)"
    if [ "${ORIOLE_STANDBY:-false}" = true ] && [ "$probe" != has-data ]; then
        die "ORIOLE_STANDBY=true: a read replica starts from the primary's database, but bucket $ORIOLE_S3_BUCKET is $probe; start the primary first"
    fi
    case $probe in
        has-data)
            restore_from_bucket
            ;;
        empty)
            say "the data directory and bucket $ORIOLE_S3_BUCKET are both empty: initializing a new database (initdb)"
            ;;
        missing)
            if [ "${ORIOLE_CREATE_BUCKET:-false}" = true ]; then
                s3 create-bucket || die "cannot create bucket $ORIOLE_S3_BUCKET"
                say "initializing a new database in the new bucket $ORIOLE_S3_BUCKET (initdb)"
            else
                die "bucket $ORIOLE_S3_BUCKET does not exist at Perch's origin: create it (fly storage create, or aws s3 mb) or set ORIOLE_CREATE_BUCKET=true"
            fi
            ;;
        *)
            die "unexpected answer from oriole-s3 probe: '$probe'"
            ;;
    esac
}

main() {
    # As upstream: options alone are options of postgres.
    [ "$#" -gt 0 ] || die "no command (the image's CMD is: postgres -D /etc/postgresql)"
    local first=$1
    if [ "${first:0:1}" = - ]; then
        set -- postgres "$@"
    fi
    if [ "$1" != postgres ]; then
        exec "$@"
    fi
    render_config --check || die "the environment is incomplete (see above)"
    trap 'on_stop INT' INT
    trap 'on_stop TERM' TERM

    if [ "$(id -u)" = 0 ] && [ -n "$run_as" ]; then
        # Root only prepares directories, then runs this script again as postgres.
        mkdir -p "$PGDATA"
        chown "$run_as:$run_as" "$PGDATA"
        chmod 700 "$PGDATA"
        local drop
        drop=$(command -v gosu || command -v su-exec) || die "neither gosu nor su-exec is installed"
        exec "$drop" "$run_as" "${BASH_SOURCE[0]}" "$@"
    fi

    render_config "$conf_file"
    wait_for_perch
    break_lock_if_asked
    prepare_data_dir
    if [ "${ORIOLE_STANDBY:-false}" = true ]; then
        : >"$PGDATA/standby.signal"
        say "ORIOLE_STANDBY=true: starting as a read replica that follows bucket $ORIOLE_S3_BUCKET's WAL archive"
    fi
    trap - INT TERM
    exec "$upstream" "$@"
}

main "$@"
