#!/usr/bin/env bash
# A private PostgreSQL cluster for development, tests and CI, on 127.0.0.1.
#
#   scripts/postgres.sh start          install PostgreSQL if missing, create the
#                                      cluster if missing, start it (idempotent),
#                                      print WEFT_PG_URL=postgres://...
#   scripts/postgres.sh stop [--purge] stop the cluster this script started (in
#                                      this run dir); --purge also deletes its data
#   scripts/postgres.sh status         say whether it runs (exit 0) or not (exit 1)
#   scripts/postgres.sh env            print WEFT_PG_URL=... if it runs (exit 1 if not)
#
# Use it as `eval "$(scripts/postgres.sh start)"; export WEFT_PG_URL`.
#
# Settings (environment):
#   WEFT_PG_PORT     port to listen on; without it, the first free port from
#                    15432 on (so a cluster of another run dir is no clash)
#   WEFT_RUN_DIR     where the cluster lives (default /tmp/weft-run):
#                    postgres/data (the cluster), postgres.log, postgres.port,
#                    postgres.password, postgres.lock. The directory must be
#                    reachable by the `postgres` OS user (so not under /root).
#   WEFT_PG_BINDIR   directory of the server binaries (initdb, pg_ctl,
#                    postgres); default: the newest /usr/lib/postgresql/*/bin,
#                    else the PATH
#
# The cluster is a plain `initdb` cluster: UTF-8, C locale, superuser
# `postgres` with a random password (in postgres.password, mode 600),
# scram-sha-256 password authentication for TCP, no Unix socket, listening on
# 127.0.0.1 only. The server refuses to run as root, so when this script runs
# as root it runs initdb and pg_ctl as the `postgres` OS user (runuser); run as
# another user, it runs them as that user. On a Debian-like machine without
# PostgreSQL, `start` installs it with apt-get (as root).

set -euo pipefail

RUN_DIR="${WEFT_RUN_DIR:-/tmp/weft-run}"
PG_DIR="$RUN_DIR/postgres"
DATA_DIR="$PG_DIR/data"
PORT_FILE="$RUN_DIR/postgres.port"
PASSWORD_FILE="$RUN_DIR/postgres.password"
LOG_FILE="$RUN_DIR/postgres.log"
LOCK_FILE="$RUN_DIR/postgres.lock"
readonly FIRST_PORT=15432
# The port of the cluster this run dir started, else the requested one.
PORT="$(cat "$PORT_FILE" 2>/dev/null || true)"
[[ "$PORT" =~ ^[0-9]+$ ]] || PORT="${WEFT_PG_PORT:-$FIRST_PORT}"

say() { echo "postgres.sh: $*" >&2; }
die() { say "$*"; exit 1; }

port_open() {
    # bash's /dev/tcp: no netcat needed. A subshell so the descriptor closes.
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

is_root() { [[ "$(id -u)" == 0 ]]; }

as_pg() {
    # Runs a command as the user the server runs as.
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

running_pid() {
    # Prints the postmaster's pid if the cluster of this run dir is running.
    local pid
    pid="$(head -n 1 "$DATA_DIR/postmaster.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: the process must be a postgres server on our data dir.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$DATA_DIR" || return 1
    echo "$pid"
}

url() {
    local password
    password="$(cat "$PASSWORD_FILE" 2>/dev/null)" || die "no password file $PASSWORD_FILE; stop and start again."
    echo "WEFT_PG_URL=postgres://postgres:$password@127.0.0.1:$PORT/postgres"
}

find_bindir() {
    # Prints the directory of initdb, pg_ctl and postgres, or fails.
    if [[ -n "${WEFT_PG_BINDIR:-}" ]]; then
        [[ -x "$WEFT_PG_BINDIR/pg_ctl" ]] || die "WEFT_PG_BINDIR=$WEFT_PG_BINDIR has no pg_ctl."
        echo "$WEFT_PG_BINDIR"
        return 0
    fi
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$dir" && -x "$dir/pg_ctl" && -x "$dir/initdb" ]]; then
        echo "$dir"
        return 0
    fi
    local ctl
    ctl="$(command -v pg_ctl 2>/dev/null || true)"
    if [[ -n "$ctl" ]] && [[ -x "$(dirname "$(readlink -f "$ctl")")/initdb" ]]; then
        dirname "$(readlink -f "$ctl")"
        return 0
    fi
    return 1
}

install_postgres() {
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is missing and this is not a Debian-like system; install it or set WEFT_PG_BINDIR."
    is_root || die "PostgreSQL is missing; install it (apt-get install postgresql) or set WEFT_PG_BINDIR."
    say "installing postgresql with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

bindir() {
    local dir
    if ! dir="$(find_bindir)"; then
        install_postgres
        dir="$(find_bindir)" || die "apt-get installed postgresql but no server binaries were found; set WEFT_PG_BINDIR."
    fi
    echo "$dir"
}

ensure_cluster() {
    # Creates the data directory and the cluster if missing ($1: bin dir).
    local bin="$1"
    if is_root; then
        id postgres >/dev/null 2>&1 || die "there is no \`postgres\` OS user to run the server as (it refuses root); install the postgresql package or create the user."
    fi
    mkdir -p "$PG_DIR"
    if is_root; then
        chown postgres: "$PG_DIR"
    fi
    chmod 700 "$PG_DIR"
    as_pg test -w "$PG_DIR" || die "$PG_DIR is not writable by the postgres user (a parent directory is private?); set WEFT_RUN_DIR to a directory under /tmp."
    [[ -f "$DATA_DIR/PG_VERSION" ]] && return 0
    rm -rf "$DATA_DIR"
    local pwfile="$PG_DIR/initdb.pw"
    if [[ ! -s "$PASSWORD_FILE" ]]; then
        (umask 077 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PASSWORD_FILE")
    fi
    (umask 077 && cp "$PASSWORD_FILE" "$pwfile")
    if is_root; then
        chown postgres: "$pwfile"
    fi
    say "creating a cluster in $DATA_DIR"
    if ! as_pg "$bin/initdb" -D "$DATA_DIR" -U postgres --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync \
        >>"$LOG_FILE" 2>&1; then
        rm -f "$pwfile"
        tail -n 20 "$LOG_FILE" >&2 || true
        die "initdb failed (log above, full log in $LOG_FILE)."
    fi
    rm -f "$pwfile"
}

start() {
    mkdir -p "$RUN_DIR"
    # One starter at a time per run dir (tests may call us concurrently).
    exec 9>"$LOCK_FILE"
    flock -w 120 9 || die "another postgres.sh holds $LOCK_FILE for over 120 s."

    if running_pid >/dev/null; then
        url
        return 0
    fi
    PORT="${WEFT_PG_PORT:-$FIRST_PORT}"
    if port_open; then
        if [[ -n "${WEFT_PG_PORT:-}" ]]; then
            die "port $PORT is in use by a process this script did not start (from $RUN_DIR); stop it or choose another WEFT_PG_PORT."
        fi
        local last=$((PORT + 100))
        while port_open; do
            PORT=$((PORT + 1))
            [[ "$PORT" -le "$last" ]] || die "ports $FIRST_PORT..$last are all in use; set WEFT_PG_PORT to a free port."
        done
    fi
    local bin
    bin="$(bindir)"
    ensure_cluster "$bin"
    touch "$LOG_FILE"
    if is_root; then
        chown postgres: "$LOG_FILE"
    fi
    say "starting $bin/postgres on 127.0.0.1:$PORT (log: $LOG_FILE)"
    # pg_ctl detaches the server (setsid) and sends its output to the log, so
    # no caller's pipe stays open; it must not inherit the lock's descriptor
    # (9) or the server would hold the lock. -w: wait (bounded) until it accepts.
    if ! as_pg "$bin/pg_ctl" -D "$DATA_DIR" -l "$LOG_FILE" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=''" \
        start >/dev/null 2>>"$LOG_FILE" 9>&- </dev/null; then
        tail -n 20 "$LOG_FILE" >&2 || true
        die "the server did not start on 127.0.0.1:$PORT within 60 s (log above, full log in $LOG_FILE)."
    fi
    echo "$PORT" >"$PORT_FILE"
    port_open || die "the server reports started but 127.0.0.1:$PORT does not accept connections (log: $LOG_FILE)."
    url
}

stop() {
    local purge="${1:-}"
    local pid
    if pid="$(running_pid)"; then
        local bin
        bin="$(find_bindir || true)"
        if [[ -z "$bin" ]] || ! as_pg "$bin/pg_ctl" -D "$DATA_DIR" -m fast -w -t 30 stop >/dev/null 2>&1 9>&- </dev/null; then
            say "pg_ctl could not stop the server (pid $pid) within 30 s; sending SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        say "stopped (pid $pid)"
    else
        say "not running"
    fi
    rm -f "$PORT_FILE"
    if [[ "$purge" == "--purge" ]]; then
        rm -rf "$PG_DIR" "$PASSWORD_FILE"
        say "deleted $PG_DIR"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    status)
        if pid="$(running_pid)"; then
            echo "running: pid $pid, $(url)"
        else
            echo "not running (run dir $RUN_DIR)"
            exit 1
        fi
        ;;
    env)
        running_pid >/dev/null || die "not running (run dir $RUN_DIR); run scripts/postgres.sh start."
        url
        ;;
    *)
        echo "usage: $0 start|stop [--purge]|status|env" >&2
        exit 2
        ;;
esac
