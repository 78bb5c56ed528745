#!/bin/bash
# The cost of TLS + authentication (BENCHMARKS.md, session 5): alternating runs of a baseline
# build (no TLS, no keys: BASE) and the current one (NEW) with and without --plain-http, each
# against its own embedded 3-node cluster. Build the baseline from an older commit in its own
# target dir, e.g.
#   git worktree add /tmp/base fe2831f && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release -p settle)
# then: BASE=/tmp/base-target/release/settle NEW=target/release/settle deploy/bench/auth-cost.sh
set -u
BASE=${BASE:?the baseline settle binary}
NEW=${NEW:-target/release/settle}
OUT=${OUT:-/tmp/auth-cost}
mkdir -p "$OUT"
single="--concurrency 64 --accounts 10000 --duration 10s --warmup 2s"
batch="--batch-size 8000 --concurrency 2 --accounts 10000 --duration 10s --warmup 2s"
run() { # shape rounds
  local shape=$1 rounds=$2 args
  [ "$shape" = single ] && args=$single || args=$batch
  for round in $(seq 1 "$rounds"); do
    for mode in base new newplain; do
      case $mode in base) bin=$BASE; extra="";; new) bin=$NEW; extra="";; newplain) bin=$NEW; extra="--plain-http";; esac
      json="$OUT/$shape-$mode-$round.json"
      timeout 300 "$bin" bench $args $extra --json "$json" > "$OUT/$shape-$mode-$round.txt" 2>&1
      python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], sys.argv[3], sys.argv[4], round(d['transfers_per_sec']), d['latency_ms']['p99'], d['conserved'])" \
        "$json" "$shape" "$mode" "$round"
    done
  done
}
run single 3
run batch 2
