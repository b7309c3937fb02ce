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

cleanup() {
  if [[ -x scripts/kafka.sh ]]; then scripts/kafka.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if [[ -x scripts/kafka.sh ]]; then
  echo "==> starting the Kafka broker"
  eval "$(scripts/kafka.sh start | grep '^KAFKA_BROKERS=')"
  export KAFKA_BROKERS
  echo "    KAFKA_BROKERS=$KAFKA_BROKERS"
fi

echo "==> cargo test (all targets)"
cargo test --workspace --all-targets
echo "==> cargo test (doctests)"
cargo test --workspace --doc
echo "==> all tests passed"
