#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs and starts what the tests
# need (the Kafka-protocol broker; later PostgreSQL), runs every test of the
# workspace, compiles the benchmarks, and stops what it started.
#
#   ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}"
export WEFT_RUN_DIR="${WEFT_RUN_DIR:-/tmp/weft-run-$$}"
mkdir -p "$WEFT_RUN_DIR"

WEFT_PG_STARTED=""
cleanup() {
  if [[ -x scripts/kafka.sh ]]; then scripts/kafka.sh stop >/dev/null 2>&1 || true; fi
  if [[ -n "$WEFT_PG_STARTED" ]]; then scripts/postgres.sh stop --purge >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if [[ -x scripts/kafka.sh ]]; then
  echo "==> starting the Kafka broker"
  eval "$(scripts/kafka.sh start | grep '^KAFKA_BROKERS=')"
  export KAFKA_BROKERS
  echo "    KAFKA_BROKERS=$KAFKA_BROKERS"
fi

# PostgreSQL for the warehouse tests: a given WEFT_PG_URL is used as is;
# otherwise a private cluster in $WEFT_RUN_DIR, deleted at exit.
if [[ -z "${WEFT_PG_URL:-}" && -x scripts/postgres.sh ]]; then
  echo "==> starting PostgreSQL"
  WEFT_PG_STARTED=1
  eval "$(scripts/postgres.sh start | grep '^WEFT_PG_URL=')"
  export WEFT_PG_URL
  echo "    WEFT_PG_URL=${WEFT_PG_URL%%:*}://...@${WEFT_PG_URL##*@}"
fi

echo "==> cargo test (all targets)"
cargo test --workspace --all-targets
echo "==> cargo test (doctests)"
cargo test --workspace --doc
echo "==> all tests passed"
