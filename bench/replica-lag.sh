#!/usr/bin/env bash
# replica-lag: a real OrioleDB primary and a real OrioleDB standby, each beside its own Perch, both
# Perches in front of one moto bucket; measures the standby's lag (a row committed on the primary
# -> visible on the standby) and records the standby's S3 traffic through bench/s3-trace-proxy.py.
# docs/replicas.md ("Lag, measured") has the figures and how they were taken.
#
#   moto :21101  <-  Perch primary :21102 (admin :21103)  <-  OrioleDB primary (port 21110)
#                <-  Perch --role replica :21104 (admin :21105)  <-  trace proxy :21106
#                                                        <-  OrioleDB standby (port 21111)
#
# Needs: an OrioleDB build (ORIOLE_PG: its prefix, with bin/initdb, bin/pg_ctl, bin/psql),
# moto_server and python3 with boto3 on PATH, the perch binary (PERCH_BIN), a user to run Postgres
# as (PG_USER, default pgrun; Postgres refuses root). Runs everything under RUN_DIR.
#
# Usage: bench/replica-lag.sh setup | trials-switch N | trials-timeout N | idle SECONDS | burst ROWS
#        | checkpoint | restart-standby | forget-control | stop
#   setup            start moto, both Perches, the proxy; initdb the primary in S3 mode, create a
#                    table, checkpoint; restore the standby from the bucket through the replica
#                    Perch and start it (standby.signal, restore_command = perch wal fetch)
#   trials-switch N  N trials: insert a row on the primary, SELECT pg_switch_wal(), poll the standby
#                    every 50 ms until the row is visible; one line per trial (seconds)
#   trials-timeout N the same without pg_switch_wal(): the segment is archived by archive_timeout
#                    (TRIAL_GAP_MAX: the longest pause between trials, default 5 s)
#   idle SECONDS     counts the replica Perch's requests (proxy trace) over SECONDS of no writes
#   burst ROWS       inserts ROWS rows on the primary in one statement, then one more row, and
#                    says how long after that last commit the standby had it
#   checkpoint       CHECKPOINT on the primary, a segment switch, and once the standby has replayed
#                    it, CHECKPOINT on the standby (a restartpoint, as checkpoint_timeout makes one)
#   restart-standby  stops the standby (fast, if it runs) and starts it; says whether it came back
#   forget-control   DELETEs data/orioledb_data/control through the replica Perch (an overlay
#                    delete marker, never uploaded), so the standby's start check sees 404
#                    (docs/replicas.md, "Found with a real standby")
#   stop             stops everything this script started (by the pids it recorded)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pg=${ORIOLE_PG:-/var/tmp/oriole-build/pg}
perch=${PERCH_BIN:-/var/tmp/bin-main/perch}
run=${RUN_DIR:-/var/tmp/standby-run}
pg_user=${PG_USER:-pgrun}
archive_timeout=${ARCHIVE_TIMEOUT:-60s}
retry_interval=${WAL_RETRIEVE_RETRY_INTERVAL:-5s}
gap_max=${TRIAL_GAP_MAX:-5}
bucket=orioledb
# Ports PORT_BASE+1.. (default 21100: below Linux's ephemeral range, which other programs' client
# connections and port-0 listeners take from).
base=${PORT_BASE:-21100}
moto_port=$((base + 1)) primary_port=$((base + 2)) primary_admin=$((base + 3))
replica_port=$((base + 4)) replica_admin=$((base + 5)) proxy_port=$((base + 6))
pg_primary=$((base + 10)) pg_standby=$((base + 11))

say() { printf 'replica-lag: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

wait_port() {
    local i
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "nothing listens on port $1"
}

as_pg() { runuser -u "$pg_user" -- "$@"; }
psql_at() { as_pg "$pg/bin/psql" -h "$run/pg" -p "$1" -U postgres -d postgres -XAtq -c "$2"; }

start_bg() { # NAME CMD...: starts CMD in the background, its pid in RUN_DIR/NAME.pid
    local name=$1
    shift
    "$@" >"$run/$name.log" 2>&1 &
    echo $! >"$run/$name.pid"
}

oriole_conf() { # PORT S3_PORT: the configuration both servers share (S3 mode, as oriole-image)
    cat <<EOF
listen_addresses = ''
port = $1
unix_socket_directories = '$run/pg'
shared_preload_libraries = 'orioledb'
default_table_access_method = 'orioledb'
orioledb.main_buffers = 128MB
orioledb.undo_buffers = 64MB
max_wal_size = 1GB
checkpoint_timeout = 5min
orioledb.s3_mode = on
orioledb.s3_num_workers = 20
# 20 S3 workers, OrioleDB's recovery pools (3 + 3) and Postgres's own: the default 8 starts only
# 6 S3 workers and leaves none for recovery (a standby dies: "unable to start recovery workers").
max_worker_processes = 40
orioledb.s3_use_https = off
archive_mode = on
archive_library = 'orioledb'
archive_timeout = $archive_timeout
wal_retrieve_retry_interval = $retry_interval
orioledb.s3_host = 'localhost:$2'
orioledb.s3_region = 'us-east-1'
orioledb.s3_prefix = '$bucket'
orioledb.s3_accesskey = 'perch-dev'
orioledb.s3_secretkey = 'perch-dev-secret'
log_line_prefix = '%m [%p] '
EOF
}

setup() {
    [ -x "$pg/bin/initdb" ] || die "no OrioleDB build at $pg (ORIOLE_PG)"
    [ ! -e "$run/moto.pid" ] || die "$run holds a previous run: $0 stop, then remove $run"
    mkdir -p "$run"
    chmod 755 "$run"
    # The development client pair (perch-dev / perch-dev-secret) on loopback: no secret to keep.
    unset PERCH_ACCESS_KEY_ID PERCH_SECRET_ACCESS_KEY
    start_bg moto moto_server -H 127.0.0.1 -p "$moto_port"
    wait_port "$moto_port"
    python3 - "$moto_port" "$bucket" <<'EOF'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket=sys.argv[2])
EOF
    export PERCH_ORIGIN_ACCESS_KEY_ID=test PERCH_ORIGIN_SECRET_ACCESS_KEY=test PERCH_LOG=info
    start_bg perch-primary "$perch" serve --listen "127.0.0.1:$primary_port" \
        --admin-listen "127.0.0.1:$primary_admin" --data-dir "$run/perch-primary" \
        --origin "http://127.0.0.1:$moto_port" --origin-region us-east-1 --lease-bucket "$bucket"
    wait_port "$primary_port"

    say "initdb of the primary (OrioleDB in S3 mode through the primary Perch)"
    # Sockets and server logs: a directory of the user Postgres runs as.
    install -d -o "$pg_user" -m 755 "$run/pg"
    install -d -o "$pg_user" -m 700 "$run/primary"
    as_pg "$pg/bin/initdb" -D "$run/primary" -A trust -U postgres --no-locale -E UTF8 >"$run/initdb.log"
    oriole_conf "$pg_primary" "$primary_port" >>"$run/primary/postgresql.conf"
    as_pg "$pg/bin/pg_ctl" -D "$run/primary" -l "$run/pg/primary.log" -w start >/dev/null
    psql_at "$pg_primary" "CREATE EXTENSION orioledb"
    psql_at "$pg_primary" "CREATE TABLE marks (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(), note text) USING orioledb"
    psql_at "$pg_primary" "INSERT INTO marks (note) SELECT 'seed ' || g FROM generate_series(1, 10000) g"
    psql_at "$pg_primary" "CHECKPOINT"
    psql_at "$pg_primary" "SELECT pg_switch_wal()" >/dev/null

    start_bg perch-replica "$perch" serve --role replica --listen "127.0.0.1:$replica_port" \
        --admin-listen "127.0.0.1:$replica_admin" --data-dir "$run/perch-replica" \
        --origin "http://127.0.0.1:$moto_port" --origin-region us-east-1
    wait_port "$replica_port"
    start_bg proxy python3 "$here/s3-trace-proxy.py" --listen "127.0.0.1:$proxy_port" \
        --upstream "127.0.0.1:$replica_port" --out "$run/standby-trace.jsonl" --phase seed-restore
    wait_port "$proxy_port"

    say "restoring the standby from the bucket through the replica Perch (oriole-image/restore.py)"
    install -d -o "$pg_user" -m 700 "$run/standby"
    (
        cd "$run/standby"
        AWS_ACCESS_KEY_ID=perch-dev AWS_SECRET_ACCESS_KEY=perch-dev-secret AWS_DEFAULT_REGION=us-east-1 \
            AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null PG_BIN="$pg/bin" \
            python3 "$here/../oriole-image/restore.py" --endpoint "http://localhost:$proxy_port" \
            --bucket "$bucket" --data-dir "$run/standby"
    ) >"$run/restore.log" 2>&1 || die "restore failed: $run/restore.log"
    chown -R "$pg_user:$pg_user" "$run/standby"
    chmod 700 "$run/standby"
    # The restored directory holds the primary's configuration (restore.py fetches data/N/...):
    # the standby's own port and endpoint come last, so they win.
    [ -e "$run/standby/postgresql.conf" ] || cp "$run/primary/postgresql.conf" "$run/standby/postgresql.conf"
    [ -e "$run/standby/pg_hba.conf" ] || printf 'local all all trust\n' >"$run/standby/pg_hba.conf"
    {
        oriole_conf "$pg_standby" "$proxy_port"
        printf "restore_command = '%s wal fetch --endpoint http://localhost:%s --bucket %s %%f %%p'\n" \
            "$perch" "$proxy_port" "$bucket"
    } >>"$run/standby/postgresql.conf"
    as_pg touch "$run/standby/standby.signal"
    echo standby-start >"$run/standby-trace.jsonl.phase"
    kill -USR1 "$(cat "$run/proxy.pid")"
    as_pg "$pg/bin/pg_ctl" -D "$run/standby" -l "$run/pg/standby.log" -w -t 300 start >/dev/null
    say "standby up: $(psql_at "$pg_standby" "SELECT pg_is_in_recovery(), count(*) FROM marks")"
}

phase() {
    echo "$1" >"$run/standby-trace.jsonl.phase"
    kill -USR1 "$(cat "$run/proxy.pid")"
}

trials() { # MODE N
    local mode=$1 n=$2 i id t0 t1 visible
    phase "lag-$mode"
    say "trials ($mode): archive_timeout=$archive_timeout wal_retrieve_retry_interval=$retry_interval"
    printf 'trial\tmode\tlag_s\n'
    for i in $(seq 1 "$n"); do
        id=$(psql_at "$pg_primary" "INSERT INTO marks (note) VALUES ('$mode trial $i') RETURNING id")
        t0=$(date +%s.%N)
        if [ "$mode" = switch ]; then
            psql_at "$pg_primary" "SELECT pg_switch_wal()" >/dev/null
        fi
        while :; do
            visible=$(psql_at "$pg_standby" "SELECT count(*) FROM marks WHERE id = $id")
            [ "$visible" = 1 ] && break
            sleep 0.05
        done
        t1=$(date +%s.%N)
        printf '%s\t%s\t%.2f\n' "$i" "$mode" "$(echo "$t1 - $t0" | bc -l)"
        # The next trial starts 1 s to TRIAL_GAP_MAX s later (uniform): at a random point of the
        # standby's polling cycle and, with a gap as long as archive_timeout, of the primary's.
        sleep "$(awk -v s="$RANDOM" -v m="$gap_max" 'BEGIN { srand(s); printf "%.2f", 1 + rand() * (m - 1) }')"
    done
}

idle() { # SECONDS
    local secs=$1 before after
    phase idle
    before=$(wc -l <"$run/standby-trace.jsonl")
    sleep "$secs"
    after=$(wc -l <"$run/standby-trace.jsonl")
    printf 'idle %s s: %s requests from the standby\n' "$secs" "$((after - before))"
}

burst() { # ROWS
    local rows=$1 id t1 t2
    phase "burst-$rows"
    psql_at "$pg_primary" "INSERT INTO marks (note) SELECT 'burst ' || g || repeat('x', 200) FROM generate_series(1, $rows) g"
    id=$(psql_at "$pg_primary" "INSERT INTO marks (note) VALUES ('after the burst') RETURNING id")
    t1=$(date +%s.%N)
    until [ "$(psql_at "$pg_standby" "SELECT count(*) FROM marks WHERE id = $id")" = 1 ]; do
        sleep 0.1
    done
    t2=$(date +%s.%N)
    printf 'burst of %s rows: the last commit visible on the standby after %.2f s\n' "$rows" "$(echo "$t2 - $t1" | bc -l)"
    printf 'primary: %s\nstandby: %s\n' \
        "$(psql_at "$pg_primary" "SELECT count(*), sum(length(note)) FROM marks")" \
        "$(psql_at "$pg_standby" "SELECT count(*), sum(length(note)) FROM marks")"
}

checkpoint() {
    local lsn
    phase checkpoint
    psql_at "$pg_primary" "CHECKPOINT"
    lsn=$(psql_at "$pg_primary" "SELECT pg_switch_wal()")
    until [ "$(psql_at "$pg_standby" "SELECT pg_last_wal_replay_lsn() >= '$lsn'")" = t ]; do
        sleep 0.5
    done
    psql_at "$pg_standby" "CHECKPOINT"
    say "restartpoint done: $(grep -c 'restartpoint complete' "$run/pg/standby.log") so far"
}

restart_standby() {
    phase standby-restart
    if [ -e "$run/standby/postmaster.pid" ]; then
        as_pg "$pg/bin/pg_ctl" -D "$run/standby" -m fast -w -t 300 stop >/dev/null
    fi
    if as_pg "$pg/bin/pg_ctl" -D "$run/standby" -l "$run/pg/standby.log" -w -t 300 start >/dev/null; then
        say "standby restarted: $(psql_at "$pg_standby" "SELECT pg_is_in_recovery(), count(*) FROM marks")"
    else
        say "the standby did not start again; its log says:"
        grep -E 'FATAL|DETAIL' "$run/pg/standby.log" | tail -4 >&2
        return 1
    fi
}

forget_control() {
    phase forget-control
    python3 - "$replica_port" "$bucket" <<'EOF'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=f"http://localhost:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="perch-dev", aws_secret_access_key="perch-dev-secret",
                  config=Config(s3={"addressing_style": "path"}))
s3.delete_object(Bucket=sys.argv[2], Key="data/orioledb_data/control")
EOF
}

stop() {
    local d
    for d in standby primary; do
        if [ -e "$run/$d/postmaster.pid" ]; then
            as_pg "$pg/bin/pg_ctl" -D "$run/$d" -m fast -w -t 120 stop >/dev/null || true
        fi
    done
    local name
    for name in proxy perch-replica perch-primary moto; do
        if [ -e "$run/$name.pid" ]; then
            kill "$(cat "$run/$name.pid")" 2>/dev/null || true
            rm -f "$run/$name.pid"
        fi
    done
}

case ${1:-} in
    setup) setup ;;
    trials-switch) trials switch "${2:?N}" ;;
    trials-timeout) trials timeout "${2:?N}" ;;
    idle) idle "${2:?SECONDS}" ;;
    burst) burst "${2:?ROWS}" ;;
    checkpoint) checkpoint ;;
    restart-standby) restart_standby ;;
    forget-control) forget_control ;;
    stop) stop ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
        exit 2
        ;;
esac
