#!/usr/bin/env bash
# oriole-e2e: a real OrioleDB in S3 mode through a fresh Perch versus directly against the origin,
# end to end, as the README's demo goes (issue #13's table): create a 1M-row table, CHECKPOINT,
# UPDATE a tenth of the rows, CHECKPOINT, stop, lose the machine (the data directory and Perch's
# data directory removed), restore the data directory from the bucket with a loader through a
# fresh Perch (or directly), start Postgres on it and run the first queries, checked against the
# values read before the stop.
#
#   moto :B+1  <-  origin-proxy :B+2 (--latency-ms L, --new-conn-rtts 2)
#              <-  "perch": Perch :B+3 (admin :B+4)  <-  OrioleDB (port B+10), restore.py
#                           Perch :B+5 (admin :B+6)  <-  OrioleDB's upstream loader
#              <-  "direct": OrioleDB and both loaders talk to the proxy itself
#
# Every round starts from scratch: a new moto, proxy and bucket, new data directories, a fresh
# Perch for the load and another (empty data directory) for the restore. Each round restores
# with both loaders, in an order that alternates between rounds: the image's restore tool
# (oriole-image/restore.py, its data directory is the one Postgres then starts on) and OrioleDB's
# upstream loader (orioledb_s3_loader.py, patched as bench/restore-bench.py patches it; its
# directory is only compared with restore.py's). Through Perch, each loader has a Perch of its
# own; the upstream loader's is stopped with SIGKILL so that it writes no hot set to the bucket.
# The loader starts once Perch's /readyz answers (as fly/supervise.sh starts Postgres); the time
# from Perch's start to /readyz is recorded apart (perch_ready_s).
#
# Measured per round (RESULTS: OUT_DIR/rounds/<latency>-<target>-<n>/metrics.tsv, and the
# summary in OUT_DIR/summary.md): the INSERT, CHECKPOINT #1, the UPDATE, CHECKPOINT #2, pg_ctl stop,
# `perch flush` and Perch's exit after SIGTERM, each loader's time, pg_ctl start on the restored
# directory, the first query (a full scan: SELECT count(*), sum(hashtext(title))) and a point
# query by primary key, whether each gave the values read before the stop, Perch's CPU seconds
# per phase (/proc/PID/stat), the 5xx answers the proxy saw, the ERROR/FATAL/PANIC lines of the
# Postgres logs and the WARN/ERROR lines of Perch's.
#
# Needs: an OrioleDB build (ORIOLE_PG: its prefix, with bin/initdb, bin/pg_ctl, bin/psql,
# bin/pg_controldata), moto_server and python3 with boto3 on PATH, the perch and perch-bench
# binaries (PERCH_BIN, PERCH_BENCH_BIN), OrioleDB's orioledb_s3_loader.py (UPSTREAM_LOADER; empty:
# the upstream loader is not run), a user to run Postgres as (PG_USER, default pgrun), curl,
# root (runuser). Data directories go under RUN_DIR (default $TMPDIR/oriole-e2e): point TMPDIR at
# a journaled ext4 volume first (eval "$(bash bench/volume.sh)").
#
# Usage: bench/oriole-e2e.sh run [ROUNDS]    ROUNDS rounds (default 3) of every latency in
#                                            LATENCIES (default "20 80") and both targets,
#                                            targets alternated, then the summary
#        bench/oriole-e2e.sh round LATENCY TARGET N    one round (TARGET: perch or direct)
#        bench/oriole-e2e.sh summary         the table from the rounds in OUT_DIR
#        bench/oriole-e2e.sh stop            stops what a round left running (by recorded pids)
# Other settings: ROWS (1000000), HANDSHAKE_RTTS (2), FIRST_ROUND (1: `run 8` with FIRST_ROUND=4 adds
# rounds 4 to 8 to those in OUT_DIR), PORT_BASE (21200), OUT_DIR
# (/var/tmp/oriole-e2e), KEEP=1 keeps a round's data directories.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pg=${ORIOLE_PG:-/var/tmp/oriole-build/pg}
perch=${PERCH_BIN:-/var/tmp/bin-main/perch}
perch_bench=${PERCH_BENCH_BIN:-$(dirname "$perch")/perch-bench}
upstream_loader=${UPSTREAM_LOADER-/var/tmp/oriole-ext/orioledb_s3_loader.py}
out=${OUT_DIR:-/var/tmp/oriole-e2e}
run=${RUN_DIR:-${TMPDIR:-/tmp}/oriole-e2e}
pg_user=${PG_USER:-pgrun}
rows=${ROWS:-1000000}
rtts=${HANDSHAKE_RTTS:-2}
latencies=${LATENCIES:-20 80}
bucket=orioledb
base=${PORT_BASE:-21200}
moto_port=$((base + 1)) proxy_port=$((base + 2))
perch_port=$((base + 3)) perch_admin=$((base + 4))
perch_up_port=$((base + 5)) perch_up_admin=$((base + 6))
pg_port=$((base + 10))

say() { printf 'oriole-e2e: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "nothing listens on port $1"
}

wait_ready() { # ADMIN_PORT: until Perch's /readyz answers 200
    for _ in $(seq 1 6000); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null; then return 0; fi
        sleep 0.01
    done
    die "Perch on admin port $1 never became ready"
}

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
cpu_of() { # PID: user + system CPU seconds so far
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"
}
diff_of() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

metric() { printf '%s\t%s\n' "$1" "$2" >>"$logs/metrics.tsv"; }

as_pg() { runuser -u "$pg_user" -- "$@"; }
psql_at() { as_pg "$pg/bin/psql" -h "$rd/sock" -p "$pg_port" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
timed_sql() { # NAME SQL: runs SQL, its time as metric NAME_s, its output in $sql_out
    local t
    t=$(now)
    metric "$1_at" "$t"
    sql_out=$(psql_at "$2")
    metric "$1_s" "$(since "$t")"
}

start_bg() { # NAME CMD...: starts CMD in the background, its pid in $rd/NAME.pid
    local name=$1
    shift
    "$@" >>"$logs/$name.log" 2>&1 &
    echo $! >"$rd/$name.pid"
}

kill_bg() { # NAME [SIGNAL]: signals a process start_bg started and waits for it
    local name=$1 sig=${2:-TERM} pid
    [ -e "$rd/$name.pid" ] || return 0
    pid=$(cat "$rd/$name.pid")
    kill "-$sig" "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$rd/$name.pid"
}

oriole_conf() { # S3_PORT: OrioleDB in S3 mode (as bench/replica-lag.sh and oriole-image)
    cat <<EOF
listen_addresses = ''
port = $pg_port
unix_socket_directories = '$rd/sock'
shared_preload_libraries = 'orioledb'
default_table_access_method = 'orioledb'
orioledb.main_buffers = 128MB
orioledb.undo_buffers = 64MB
max_wal_size = 1GB
checkpoint_timeout = 5min
orioledb.s3_mode = on
orioledb.s3_num_workers = 20
max_worker_processes = 40
orioledb.s3_use_https = off
archive_mode = on
archive_library = 'orioledb'
archive_timeout = 60s
orioledb.s3_host = 'localhost:$1'
orioledb.s3_region = 'us-east-1'
orioledb.s3_prefix = '$bucket'
orioledb.s3_accesskey = '$key'
orioledb.s3_secretkey = '$secret'
log_line_prefix = '%m [%p] '
EOF
}

start_perch() { # NAME PORT ADMIN DATA_DIR: a fresh Perch in front of the proxy (fly.toml's settings, no lease)
    PERCH_ORIGIN_ACCESS_KEY_ID=test PERCH_ORIGIN_SECRET_ACCESS_KEY=test PERCH_LOG=info \
        start_bg "$1" "$perch" serve --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" \
        --data-dir "$4" --origin "http://127.0.0.1:$proxy_port" --origin-region us-east-1 \
        --cache-disk-bytes 8GiB --cache-memory-bytes 128MiB \
        --dirty-bytes-max 2GiB --dirty-age-max 60s --drain-timeout 150s --drain-quiet 2s
}

loader_env() { # the environment of a loader: the client pair of the target
    env -u PERCH_ACCESS_KEY_ID -u PERCH_SECRET_ACCESS_KEY AWS_ACCESS_KEY_ID="$key" \
        AWS_SECRET_ACCESS_KEY="$secret" AWS_DEFAULT_REGION=us-east-1 AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        PG_BIN="$pg/bin" "$@"
}

restore_fixed() { # PORT DIR: the image's restore tool
    install -d -m 700 "$2"
    local t rc=0
    t=$(now)
    (cd "$2" && AWS_CONFIG_FILE=/dev/null loader_env timeout 1200 python3 "$here/../oriole-image/restore.py" \
        --endpoint "http://127.0.0.1:$1" --bucket "$bucket" --data-dir "$2") >"$logs/restore-fixed.log" 2>&1 || rc=$?
    metric restore_fixed_s "$(since "$t")"
    metric restore_fixed_rc "$rc"
}

restore_upstream() { # PORT DIR: OrioleDB's loader (one object at a time)
    install -d -m 700 "$2"
    local t rc=0
    t=$(now)
    (cd "$2" && AWS_CONFIG_FILE="$rd/upstream/aws.conf" PYTHONPATH="$rd/upstream" loader_env timeout 1800 \
        python3 "$rd/upstream/orioledb_s3_loader.py" --endpoint "http://localhost:$1" --prefix "$bucket" \
        --data-dir "$2") >"$logs/restore-upstream.log" 2>&1 || rc=$?
    metric restore_upstream_s "$(since "$t")"
    metric restore_upstream_rc "$rc"
    metric restore_upstream_not_found "$(grep -c 'File not found' "$logs/restore-upstream.log" || true)"
}

prepare_upstream() {
    mkdir -p "$rd/upstream"
    # As bench/restore-bench.py: dict iteration in download_unchanged_small_files, and a testgres
    # that only runs pg_controldata.
    sed 's/for filename, checkpoint in file_checksums:/for filename, checkpoint in file_checksums.items():/' \
        "$upstream_loader" >"$rd/upstream/orioledb_s3_loader.py"
    cat >"$rd/upstream/testgres.py" <<'EOF'
import os, subprocess
def get_bin_path(name):
    return os.path.join(os.environ["PG_BIN"], name)
class utils:
    @staticmethod
    def execute_utility(args):
        return subprocess.run(args, check=True, capture_output=True, text=True,
                              env=dict(os.environ, LC_ALL="C")).stdout
EOF
    printf '[default]\ns3 =\n    addressing_style = path\n' >"$rd/upstream/aws.conf"
}

round() { # LATENCY TARGET N
    local latency=$1 target=$2 n=$3
    local name="$latency-$target-$n"
    [ "$target" = perch ] || [ "$target" = direct ] || die "TARGET: perch or direct, not $target"
    [ -x "$pg/bin/initdb" ] || die "no OrioleDB build at $pg (ORIOLE_PG)"
    rd="$run/$name"
    logs="$out/rounds/$name"
    [ ! -e "$rd" ] || die "$rd exists: a previous round of this name? ($0 stop; rm -rf $rd)"
    rm -rf "$logs"
    mkdir -p "$rd" "$logs"
    chmod 777 "$logs" # Postgres (PG_USER) writes its logs there
    chmod 755 "$run" "$rd"
    install -d -o "$pg_user" -m 755 "$rd/sock"
    echo "$rd" >"$run/current"
    unset PERCH_ACCESS_KEY_ID PERCH_SECRET_ACCESS_KEY
    metric latency_ms "$latency"
    metric target "$target"
    metric round "$n"
    metric load_before "$(cut -d' ' -f1-3 /proc/loadavg)"
    say "round $name (load $(cut -d' ' -f1-3 /proc/loadavg))"

    start_bg moto moto_server -H 127.0.0.1 -p "$moto_port"
    wait_port "$moto_port"
    python3 - "$moto_port" "$bucket" <<'EOF'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket=sys.argv[2])
EOF
    start_bg proxy "$perch_bench" origin-proxy --listen "127.0.0.1:$proxy_port" \
        --upstream "http://127.0.0.1:$moto_port" --latency-ms "$latency" --new-conn-rtts "$rtts" \
        --log "$logs/proxy.jsonl"
    wait_port "$proxy_port"

    local s3_port t c0 c1 pid
    if [ "$target" = perch ]; then
        key=perch-dev secret=perch-dev-secret s3_port=$perch_port
        t=$(now)
        start_perch perch-load "$perch_port" "$perch_admin" "$rd/perch-load"
        wait_ready "$perch_admin"
        metric perch_load_ready_s "$(since "$t")"
        pid=$(cat "$rd/perch-load.pid")
    else
        key=test secret=test s3_port=$proxy_port
    fi

    # 1. initdb in S3 mode, the demo's table, two checkpoints.
    install -d -o "$pg_user" -m 700 "$rd/data"
    as_pg "$pg/bin/initdb" -D "$rd/data" -A trust -U postgres --no-locale -E UTF8 >"$logs/initdb.log"
    oriole_conf "$s3_port" >>"$rd/data/postgresql.conf"
    t=$(now)
    as_pg "$pg/bin/pg_ctl" -D "$rd/data" -l "$logs/pg-load.log" -w -t 600 start >/dev/null
    metric pg_start_initdb_s "$(since "$t")"
    [ "$target" = perch ] && c0=$(cpu_of "$pid")
    psql_at "CREATE EXTENSION IF NOT EXISTS orioledb"
    psql_at "CREATE TABLE blog_post (id bigint PRIMARY KEY, title text NOT NULL, body text NOT NULL,
             author text NOT NULL, published_at timestamptz NOT NULL DEFAULT now()) USING orioledb"
    timed_sql insert "INSERT INTO blog_post (id, title, body, author)
        SELECT i, 'Post number ' || i, repeat('Lorem ipsum dolor sit amet. ', 8), 'author ' || (i % 100)
        FROM generate_series(1, $rows) AS i"
    [ "$target" = perch ] && { c1=$(cpu_of "$pid"); metric perch_cpu_insert_s "$(diff_of "$c0" "$c1")"; c0=$c1; }
    timed_sql checkpoint1 "CHECKPOINT"
    [ "$target" = perch ] && { c1=$(cpu_of "$pid"); metric perch_cpu_checkpoint1_s "$(diff_of "$c0" "$c1")"; c0=$c1; }
    timed_sql update "UPDATE blog_post SET title = title || ' (edited)', published_at = now() WHERE id % 10 = 0"
    [ "$target" = perch ] && { c1=$(cpu_of "$pid"); metric perch_cpu_update_s "$(diff_of "$c0" "$c1")"; c0=$c1; }
    timed_sql checkpoint2 "CHECKPOINT"
    [ "$target" = perch ] && { c1=$(cpu_of "$pid"); metric perch_cpu_checkpoint2_s "$(diff_of "$c0" "$c1")"; c0=$c1; }
    local want_scan want_p1 want_p2 mid=$((rows / 2)) odd=$((rows / 8 + 7))
    want_scan=$(psql_at "SELECT count(*), sum(hashtext(title)) FROM blog_post")
    want_p1=$(psql_at "SELECT title, author FROM blog_post WHERE id = $mid")
    want_p2=$(psql_at "SELECT title, author FROM blog_post WHERE id = $odd")
    metric want_scan "$want_scan"
    metric want_point "$want_p1 / $want_p2"

    # 2. Stop Postgres, flush and stop Perch, lose the machine.
    t=$(now)
    metric pg_stop_at "$t"
    as_pg "$pg/bin/pg_ctl" -D "$rd/data" -m fast -w -t 600 stop >/dev/null
    metric pg_stop_s "$(since "$t")"
    if [ "$target" = perch ]; then
        c1=$(cpu_of "$pid")
        metric perch_cpu_pgstop_s "$(diff_of "$c0" "$c1")"
        curl -fsS "http://127.0.0.1:$perch_admin/metrics" >"$logs/perch-load-metrics.txt" 2>&1 || true
        c0=$c1
        t=$(now)
        "$perch" status --admin "127.0.0.1:$perch_admin" >"$logs/perch-status-before-flush.txt" 2>&1 || true
        "$perch" flush --admin "127.0.0.1:$perch_admin" >"$logs/perch-flush.log" 2>&1 || metric perch_flush_failed 1
        metric perch_flush_s "$(since "$t")"
        c1=$(cpu_of "$pid")
        metric perch_cpu_flush_s "$(diff_of "$c0" "$c1")"
        metric perch_cpu_load_total_s "$c1"
        t=$(now)
        kill_bg perch-load TERM
        metric perch_exit_s "$(since "$t")"
    fi
    rm -rf "$rd/data" "$rd/perch-load"

    # 3. Restore with both loaders (order alternating by round), each through a fresh Perch.
    local order=(fixed upstream)
    [ -n "$upstream_loader" ] || order=(fixed)
    if [ -n "$upstream_loader" ] && [ $((n % 2)) = 0 ]; then order=(upstream fixed); fi
    [ -z "$upstream_loader" ] || prepare_upstream
    local loader
    for loader in "${order[@]}"; do
        if [ "$loader" = fixed ]; then
            if [ "$target" = perch ]; then
                t=$(now)
                start_perch perch-restore "$perch_port" "$perch_admin" "$rd/perch-restore"
                wait_ready "$perch_admin"
                metric perch_ready_s "$(since "$t")"
                pid=$(cat "$rd/perch-restore.pid")
                c0=$(cpu_of "$pid")
            fi
            restore_fixed "$s3_port" "$rd/restored"
            if [ "$target" = perch ]; then
                c1=$(cpu_of "$pid")
                metric perch_cpu_restore_fixed_s "$(diff_of "$c0" "$c1")"
                c0=$c1
            fi
        else
            local up_port=$s3_port
            if [ "$target" = perch ]; then
                t=$(now)
                start_perch perch-upstream "$perch_up_port" "$perch_up_admin" "$rd/perch-upstream"
                wait_ready "$perch_up_admin"
                metric perch_upstream_ready_s "$(since "$t")"
                up_port=$perch_up_port
            fi
            restore_upstream "$up_port" "$rd/restored-upstream"
            if [ "$target" = perch ]; then
                metric perch_cpu_restore_upstream_s "$(cpu_of "$(cat "$rd/perch-upstream.pid")")"
                # SIGKILL: no hot set written to the bucket for the other loader's Perch to prewarm.
                kill_bg perch-upstream KILL
                rm -rf "$rd/perch-upstream"
            fi
        fi
    done
    if [ -d "$rd/restored-upstream" ]; then
        python3 - "$rd/restored" "$rd/restored-upstream" >"$logs/compare-loaders.txt" <<'EOF'
import hashlib, os, sys
def files(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.md5(f.read()).hexdigest()
    return out
a, b = files(sys.argv[1]), files(sys.argv[2])
only_a = sorted(set(a) - set(b)); only_b = sorted(set(b) - set(a))
differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
print("fixed %d files, upstream %d files" % (len(a), len(b)))
print("only in fixed: %s" % only_a)
print("only in upstream: %s" % only_b)
print("differ: %s" % differ)
print("SAME" if not (only_a or only_b or differ) else "DIFFERENT")
EOF
        metric loaders_same "$(tail -1 "$logs/compare-loaders.txt")"
        [ -n "${KEEP:-}" ] || rm -rf "$rd/restored-upstream"
    fi
    if [ "$(sed -n 's/^restore_fixed_rc\t//p' "$logs/metrics.tsv")" != 0 ]; then
        say "restore.py failed: $logs/restore-fixed.log"
        metric first_query_ok "restore failed"
        finish_round
        return 0
    fi

    # 4. Postgres on the restored directory, the first queries.
    chown -R "$pg_user:$pg_user" "$rd/restored"
    chmod 700 "$rd/restored"
    [ -e "$rd/restored/pg_hba.conf" ] || printf 'local all all trust\n' >"$rd/restored/pg_hba.conf"
    [ -e "$rd/restored/postgresql.conf" ] || { : >"$rd/restored/postgresql.conf"; chown "$pg_user:" "$rd/restored/postgresql.conf"; }
    oriole_conf "$s3_port" >>"$rd/restored/postgresql.conf"
    t=$(now)
    if ! as_pg "$pg/bin/pg_ctl" -D "$rd/restored" -l "$logs/pg-restored.log" -w -t 600 start >/dev/null; then
        metric pg_start_restored_s "$(since "$t")"
        metric first_query_ok "postgres did not start"
        say "Postgres did not start on the restored directory: $logs/pg-restored.log"
        finish_round
        return 0
    fi
    metric pg_start_restored_s "$(since "$t")"
    if [ "$target" = perch ]; then
        c1=$(cpu_of "$pid")
        metric perch_cpu_pgstart_s "$(diff_of "$c0" "$c1")"
        c0=$c1
    fi
    local got_scan got_p1 got_p2 ok=yes
    timed_sql first_query "SELECT count(*), sum(hashtext(title)) FROM blog_post" || sql_out="ERROR"
    got_scan=$sql_out
    if [ "$target" = perch ]; then
        c1=$(cpu_of "$pid")
        metric perch_cpu_first_query_s "$(diff_of "$c0" "$c1")"
        curl -fsS "http://127.0.0.1:$perch_admin/metrics" >"$logs/perch-restore-metrics.txt" 2>&1 || true
        c0=$c1
    fi
    timed_sql point_query "SELECT title, author FROM blog_post WHERE id = $mid" || sql_out="ERROR"
    got_p1=$sql_out
    got_p2=$(psql_at "SELECT title, author FROM blog_post WHERE id = $odd" || echo ERROR)
    timed_sql second_scan "SELECT count(*), sum(hashtext(title)) FROM blog_post" || sql_out="ERROR"
    metric got_scan "$got_scan"
    metric got_point "$got_p1 / $got_p2"
    [ "$got_scan" = "$want_scan" ] || ok="no: scan $got_scan, want $want_scan"
    [ "$got_p1 / $got_p2" = "$want_p1 / $want_p2" ] || ok="no: point $got_p1 / $got_p2, want $want_p1 / $want_p2"
    [ "$sql_out" = "$want_scan" ] || ok="no: second scan $sql_out, want $want_scan"
    metric first_query_ok "$ok"
    say "round $name: $ok"
    finish_round
}

finish_round() {
    if [ -e "$rd/restored/postmaster.pid" ]; then
        as_pg "$pg/bin/pg_ctl" -D "$rd/restored" -m fast -w -t 300 stop >/dev/null || true
    fi
    local name
    for name in perch-restore perch-upstream perch-load proxy moto; do kill_bg "$name" TERM; done
    # What looked wrong: Postgres's errors, Perch's warnings, 5xx answers of the origin.
    metric pg_errors "$(cat "$logs"/pg-*.log 2>/dev/null | grep -cE 'ERROR|FATAL|PANIC' || true)"
    metric perch_warnings "$(cat "$logs"/perch-*.log 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -E '^[^ ]+ +(WARN|ERROR) ' | grep -vc 'development key pair' || true)"
    metric origin_requests "$(wc -l <"$logs/proxy.jsonl" 2>/dev/null || echo 0)"
    metric origin_5xx "$(grep -cE '"status":5[0-9][0-9]' "$logs/proxy.jsonl" 2>/dev/null || true)"
    metric load_after "$(cut -d' ' -f1-3 /proc/loadavg)"
    gzip -f "$logs/proxy.jsonl" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$rd"
    rm -f "$run/current"
}

summary() {
    python3 - "$out" <<'EOF'
import os, statistics, sys
out = sys.argv[1]
rounds = []
for d in sorted(os.listdir(os.path.join(out, "rounds"))):
    m = {}
    with open(os.path.join(out, "rounds", d, "metrics.tsv")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            m[k] = v
    m["name"] = d
    if "pg_start_restored_s" in m and "first_query_s" in m:
        # OrioleDB's start sometimes does, sometimes leaves to the first query, ~2 s of S3 reads.
        m["start_first_s"] = "%.3f" % (float(m["pg_start_restored_s"]) + float(m["first_query_s"]))
    rounds.append(m)

def vals(lat, tgt, key):
    xs = []
    for m in rounds:
        if m.get("latency_ms") == str(lat) and m.get("target") == tgt and key in m:
            try:
                if key.startswith("restore_") and m.get(key.replace("_s", "_rc"), "0") != "0":
                    continue
                xs.append(float(m[key]))
            except ValueError:
                pass
    return xs

def cell(xs):
    if not xs:
        return "n/a"
    return "%.2f s (%.2f–%.2f, n=%d)" % (statistics.median(xs), min(xs), max(xs), len(xs))

def ratio(p, d):
    if not p or not d:
        return "n/a"
    return "%.2f×" % (statistics.median(d) / statistics.median(p))

lats = sorted({int(m["latency_ms"]) for m in rounds})
cols = [("restore (restore.py)", "restore_fixed_s"), ("restore (upstream loader)", "restore_upstream_s"),
        ("first query after restore", "first_query_s"), ("point query", "point_query_s"),
        ("CHECKPOINT #1", "checkpoint1_s"), ("CHECKPOINT #2", "checkpoint2_s"),
        ("INSERT 1M", "insert_s"), ("UPDATE 10%", "update_s"), ("pg_ctl stop", "pg_stop_s"),
        ("pg_ctl start (restored)", "pg_start_restored_s"),
        ("pg_ctl start + first query", "start_first_s"), ("second full scan", "second_scan_s")]
print("Median (min–max, n) per cell; ratio = direct ÷ Perch (>1: Perch faster).\n")
print("| origin latency | what | via Perch | direct | direct ÷ Perch |")
print("|---|---|---|---|---|")
for lat in lats:
    for label, key in cols:
        p, d = vals(lat, "perch", key), vals(lat, "direct", key)
        print("| %d ms | %s | %s | %s | %s |" % (lat, label, cell(p), cell(d), ratio(p, d)))
print()
print("Issue #13's shape (medians, Perch / direct):\n")
print("| origin latency | restore (restore.py) Perch / direct | restore (upstream) Perch / direct "
      "| first query after restore | pg_ctl start + first query | CHECKPOINT #1 | CHECKPOINT #2 |")
print("|---|---|---|---|---|---|---|")
med = lambda xs: "%.1f s" % statistics.median(xs) if xs else "n/a"
for lat in lats:
    row = []
    for key in ("restore_fixed_s", "restore_upstream_s", "first_query_s", "start_first_s", "checkpoint1_s",
                "checkpoint2_s"):
        row.append("%s / %s" % (med(vals(lat, "perch", key)), med(vals(lat, "direct", key))))
    print("| %d ms | %s |" % (lat, " | ".join(row)))
print()
print("Perch-only (medians): time from Perch's start to /readyz before the restore, `perch flush`, "
      "Perch's exit after SIGTERM, Perch's CPU per phase\n")
keys = ["perch_ready_s", "perch_flush_s", "perch_exit_s", "perch_cpu_insert_s", "perch_cpu_checkpoint1_s",
        "perch_cpu_update_s", "perch_cpu_checkpoint2_s", "perch_cpu_pgstop_s", "perch_cpu_flush_s",
        "perch_cpu_load_total_s", "perch_cpu_restore_fixed_s", "perch_cpu_restore_upstream_s",
        "perch_cpu_pgstart_s", "perch_cpu_first_query_s"]
print("| origin latency | " + " | ".join(k.replace("_s", "").replace("perch_", "") for k in keys) + " |")
print("|---|" + "---|" * len(keys))
for lat in lats:
    print("| %d ms | " % lat + " | ".join(med(vals(lat, "perch", k)) for k in keys) + " |")
print()
print("Per round:\n")
rk = ["insert_s", "checkpoint1_s", "update_s", "checkpoint2_s", "pg_stop_s", "perch_flush_s", "restore_fixed_s",
      "restore_upstream_s", "pg_start_restored_s", "first_query_s", "point_query_s", "second_scan_s"]
print("| round | " + " | ".join(k[:-2] for k in rk) + " | correct | loaders same | pg errors | perch warn | origin 5xx | origin reqs | load |")
print("|---|" + "---|" * (len(rk) + 7))
for m in sorted(rounds, key=lambda m: (int(m["latency_ms"]), int(m["round"]), m["target"])):
    print("| %s | " % m["name"] + " | ".join(m.get(k, "") for k in rk) + " | %s | %s | %s | %s | %s | %s | %s |" % (
        m.get("first_query_ok", "?"), m.get("loaders_same", ""), m.get("pg_errors", ""), m.get("perch_warnings", ""),
        m.get("origin_5xx", ""), m.get("origin_requests", ""), m.get("load_before", "")))
EOF
}

stop_current() {
    [ -e "$run/current" ] || return 0
    rd=$(cat "$run/current")
    local d name
    for d in data restored; do
        if [ -e "$rd/$d/postmaster.pid" ]; then
            as_pg "$pg/bin/pg_ctl" -D "$rd/$d" -m fast -w -t 120 stop >/dev/null || true
        fi
    done
    for name in perch-restore perch-upstream perch-load proxy moto; do kill_bg "$name" TERM; done
    rm -f "$run/current"
}

case ${1:-} in
    run)
        rounds=${2:-3}
        mkdir -p "$out" "$run"
        for n in $(seq "${FIRST_ROUND:-1}" "$rounds"); do
            for latency in $latencies; do
                targets=(perch direct)
                [ $(((n + latency / 20) % 2)) = 0 ] || targets=(direct perch)
                for target in "${targets[@]}"; do
                    ("$0" round "$latency" "$target" "$n") || say "round $latency-$target-$n failed"
                    "$0" stop
                done
            done
        done
        summary | tee "$out/summary.md"
        ;;
    round) mkdir -p "$out" "$run" && round "${2:?LATENCY}" "${3:?TARGET}" "${4:?N}" ;;
    summary) summary ;;
    stop) stop_current ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
        exit 2
        ;;
esac
