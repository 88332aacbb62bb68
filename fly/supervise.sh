#!/usr/bin/env bash
# perch-fly-supervise: the main process of the Fly Machine. Runs Perch and OrioleDB side by side and
# orders their start and stop:
#
#   start: Perch first; OrioleDB (perch-oriole-entrypoint) once Perch's /readyz answers 200.
#   stop (kill_signal, SIGTERM or SIGINT): OrioleDB first, with SIGINT (a fast shutdown: the
#          shutdown checkpoint and the lock's removal go to the bucket through Perch, which
#          acknowledges them once they are in its journal on the volume), then Perch, with SIGTERM
#          (it keeps uploading its journal until it is empty or --drain-timeout passes, finishes
#          the requests in flight and exits 0; what it could not upload stays in the journal for
#          the next start). Each step has a budget; together they fit inside fly.toml's
#          kill_timeout (300 s):
#            SUPERVISE_POSTGRES_STOP_TIMEOUT (default 100 s), then SIGQUIT (immediate shutdown,
#              recovered from the local WAL at the next start) and 10 s more, then SIGKILL;
#            SUPERVISE_PERCH_STOP_TIMEOUT (default 170 s; above Perch's PERCH_DRAIN_TIMEOUT, 150 s
#              in fly.toml), then SIGKILL;
#          after a SIGKILL, up to 5 s for the process to go: 100 + 10 + 5 + 170 + 5 = 290 s.
#   If OrioleDB exits on its own, Perch is stopped and its exit status is ours (Fly restarts the
#   Machine per its restart policy). If Perch exits on its own, OrioleDB can no longer reach its
#   bucket: it gets SIGQUIT (no checkpoint is attempted) and we exit with 1.
#
# Environment: everything perch serve and perch-oriole-entrypoint read (fly.toml's [env] and the
# app's secrets). Perch does not get the Postgres settings; OrioleDB does not get the origin's keys
# (PERCH_ORIGIN_* and AWS_*) nor Perch's admin token (PERCH_ADMIN_TOKEN), and Perch runs as its own
# user, so a database superuser cannot read them either. ORIOLE_S3_BUCKET defaults to BUCKET_NAME (set by `fly storage create`).
# For tests: SUPERVISE_PERCH_BIN, SUPERVISE_ORIOLE_ENTRYPOINT, SUPERVISE_PERCH_USER (empty: run
# Perch as the current user), SUPERVISE_PERCH_READY_TIMEOUT (default 120 s).
set -Eeuo pipefail

perch_bin=${SUPERVISE_PERCH_BIN:-/usr/local/bin/perch}
oriole_entrypoint=${SUPERVISE_ORIOLE_ENTRYPOINT:-/usr/local/bin/perch-oriole-entrypoint}
perch_user=${SUPERVISE_PERCH_USER-perch}
ready_timeout=${SUPERVISE_PERCH_READY_TIMEOUT:-120}
postgres_stop_timeout=${SUPERVISE_POSTGRES_STOP_TIMEOUT:-100}
perch_stop_timeout=${SUPERVISE_PERCH_STOP_TIMEOUT:-170}

export ORIOLE_S3_BUCKET=${ORIOLE_S3_BUCKET:-${BUCKET_NAME:-}}

say() { printf 'supervise: %s\n' "$*" >&2; }

stop_requested=
on_signal() {
    if [ -z "$stop_requested" ]; then
        say "got SIG$1: stopping OrioleDB, then Perch"
    fi
    stop_requested=$1
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

perch_pid=
pg_pid=

# Children are started with `env --default-signal=INT,QUIT`: bash starts background commands with
# SIGINT and SIGQUIT ignored, and the entrypoint (a bash script until it execs postgres) could not
# then act on the SIGINT that asks OrioleDB to stop.

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# reaped PID: true once PID has exited (a zombie counts as exited); sets last_status.
last_status=0
reaped() {
    local pid=$1 state
    if ! kill -0 "$pid" 2>/dev/null; then
        return 0
    fi
    # The state is the field after the command name, which is in parentheses.
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || state=
    [ "$state" = Z ]
}

# collect PID: waits for PID (already exited) and sets last_status to its exit status.
collect() {
    last_status=0
    wait "$1" 2>/dev/null || last_status=$?
}

# wait_exit PID SECONDS: true if PID exits within SECONDS (signals are noted, not acted on).
wait_exit() {
    local pid=$1 deadline=$((SECONDS + $2))
    while ! reaped "$pid"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.2
    done
    collect "$pid"
}

# The postmaster, from PGDATA/postmaster.pid: during a first start the upstream entrypoint runs a
# temporary server that is not our child.
postmaster_pid() {
    local pid
    [ -n "${PGDATA:-}" ] && [ -r "$PGDATA/postmaster.pid" ] || return 1
    pid=$(head -n1 "$PGDATA/postmaster.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}

admin_url() {
    local addr=${PERCH_ADMIN_LISTEN:-127.0.0.1:9001} host port
    port=${addr##*:}
    host=${addr%:*}
    case $host in
        0.0.0.0 | "") host=127.0.0.1 ;;
        "[::]") host="[::1]" ;;
    esac
    printf 'http://%s:%s' "$host" "$port"
}

start_perch() {
    local run=()
    if [ -n "$perch_user" ] && [ "$(id -u)" = 0 ]; then
        install -d -o "$perch_user" -g "$perch_user" -m 0750 "${PERCH_DATA_DIR:?PERCH_DATA_DIR must be set}"
        run=(gosu "$perch_user")
    fi
    say "starting Perch"
    env --default-signal=INT,QUIT -u POSTGRES_PASSWORD -u ORIOLE_BREAK_S3_LOCK -u PGDATA \
        "${run[@]}" "$perch_bin" serve &
    perch_pid=$!
}

wait_perch_ready() {
    local url deadline=$((SECONDS + ready_timeout))
    url="$(admin_url)/readyz"
    until curl -fsS -o /dev/null --max-time 5 "$url" 2>/dev/null; do
        if [ -n "$stop_requested" ]; then
            return 1
        fi
        if reaped "$perch_pid"; then
            collect "$perch_pid"
            say "Perch exited with status $last_status before it was ready"
            perch_pid=
            return 1
        fi
        if ((SECONDS >= deadline)); then
            say "Perch is not ready after ${ready_timeout} s ($url); is the origin reachable?"
            return 1
        fi
        # Perch is ready ~0.1-0.3 s after its start: a coarser poll would add its own wait to
        # every wake (docs/benchmarks.md, "Wake").
        sleep 0.05
    done
    say "Perch is ready"
}

start_oriole() {
    if [ "$(id -u)" = 0 ] && [ -n "${PGDATA:-}" ]; then
        # The data directory's parent on the volume; the entrypoint creates PGDATA itself.
        install -d -o postgres -g postgres -m 0700 "$(dirname "$PGDATA")"
    fi
    say "starting OrioleDB"
    env --default-signal=INT,QUIT -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN \
        -u PERCH_ORIGIN_ACCESS_KEY_ID -u PERCH_ORIGIN_SECRET_ACCESS_KEY -u PERCH_ADMIN_TOKEN \
        "$oriole_entrypoint" postgres -D /etc/postgresql &
    pg_pid=$!
}

# stop_postgres SIGNAL: stops our OrioleDB child, then any postmaster still named by
# PGDATA/postmaster.pid (a temporary server of a first start, which is not our child).
stop_postgres() {
    local signal=$1 pid round
    for round in 1 2; do
        if alive "$pg_pid" && ! reaped "$pg_pid"; then
            pid=$pg_pid
        elif pid=$(postmaster_pid); then
            say "a postmaster ($pid) outlived its parent; stopping it too"
        else
            pid=
        fi
        if [ -n "$pg_pid" ] && [ "$pid" != "$pg_pid" ] && reaped "$pg_pid"; then
            collect "$pg_pid"
            pg_status=$last_status
            pg_pid=
        fi
        [ -n "$pid" ] || return 0
        say "OrioleDB: SIG$signal (up to ${postgres_stop_timeout} s)"
        kill "-$signal" "$pid" 2>/dev/null || true
        if ! wait_exit "$pid" "$postgres_stop_timeout"; then
            say "OrioleDB did not stop within ${postgres_stop_timeout} s: SIGQUIT (immediate shutdown; the next start recovers from the local WAL)"
            kill -QUIT "$pid" 2>/dev/null || true
            if ! wait_exit "$pid" 10; then
                say "OrioleDB still running: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                wait_exit "$pid" 5 || true
            fi
        fi
        if [ "$pid" = "$pg_pid" ]; then
            pg_status=$last_status
            pg_pid=
        fi
        say "OrioleDB stopped (status $last_status)"
        [ "$round" = 1 ] || return 0
    done
}

stop_perch() {
    [ -n "$perch_pid" ] || return 0
    if reaped "$perch_pid"; then
        collect "$perch_pid"
    else
        say "Perch: SIGTERM (uploads its journal, then exits; up to ${perch_stop_timeout} s)"
        kill -TERM "$perch_pid" 2>/dev/null || true
        if ! wait_exit "$perch_pid" "$perch_stop_timeout"; then
            say "Perch did not stop within ${perch_stop_timeout} s: SIGKILL (its journal stays on the volume and uploads at the next start)"
            kill -KILL "$perch_pid" 2>/dev/null || true
            wait_exit "$perch_pid" 5 || true
        fi
    fi
    perch_status=$last_status
    perch_pid=
    say "Perch stopped (status $perch_status)"
}

pg_status=
perch_status=

main() {
    start_perch
    if ! wait_perch_ready; then
        stop_perch
        if [ -n "$stop_requested" ]; then
            exit 0
        fi
        exit 1
    fi
    if [ -n "$stop_requested" ]; then
        stop_perch
        exit 0
    fi
    start_oriole

    # Runs until a stop is asked for or one of the two exits.
    local why=
    while [ -z "$why" ]; do
        if [ -n "$stop_requested" ]; then
            why=signal
        elif reaped "$pg_pid"; then
            collect "$pg_pid"
            pg_status=$last_status
            pg_pid=
            why=oriole-exited
        elif reaped "$perch_pid"; then
            collect "$perch_pid"
            perch_status=$last_status
            perch_pid=
            why=perch-exited
        else
            # A trapped signal interrupts this sleep's wait at once.
            sleep 1 &
            wait $! || true
        fi
    done

    case $why in
        signal)
            stop_postgres INT
            stop_perch
            if [ "${pg_status:-0}" = 0 ] && [ "${perch_status:-0}" = 0 ]; then
                say "stopped cleanly"
                exit 0
            fi
            say "stopped (OrioleDB status ${pg_status:-0}, Perch status ${perch_status:-0})"
            exit 1
            ;;
        oriole-exited)
            say "OrioleDB exited on its own with status $pg_status; stopping Perch"
            stop_postgres INT
            stop_perch
            exit "$pg_status"
            ;;
        perch-exited)
            say "Perch exited on its own with status $perch_status; OrioleDB cannot reach its bucket: SIGQUIT"
            postgres_stop_timeout=10
            stop_postgres QUIT
            exit 1
            ;;
    esac
}

main "$@"
