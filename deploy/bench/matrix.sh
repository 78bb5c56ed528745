#!/usr/bin/env bash
# Runs the BENCHMARKS.md matrix with `settle bench` against fresh local 3-node clusters
# (64 shards, fsync on) and writes one JSON report per configuration into $OUT.
# Usage: deploy/bench/matrix.sh [OUT_DIR]   (DURATION=10s WARMUP=2s to change the run length)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bench-results}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
mkdir -p "$OUT"
cargo build --release -q -p settle
BIN=target/release/settle

run() {
  local name=$1; shift
  echo "== $name: $*" >&2
  "$BIN" bench --duration "$DURATION" --warmup "$WARMUP" --accounts 10000 "$@" --json "$OUT/$name.json" 2>&1 | grep -E "^(transfers/s|latency|errors|conservation)" >&2
}

run single-c1 --concurrency 1
run single-c16 --concurrency 16
run single-c64 --concurrency 64
run batch-100 --concurrency 8 --batch-size 100
run batch-1000 --concurrency 4 --batch-size 1000
run batch-8000 --concurrency 2 --batch-size 8000
run zipf-c64 --concurrency 64 --distribution zipf:1.1
run hot10-c64 --concurrency 64 --distribution hot:10
run cross0-c64 --concurrency 64 --cross-shard-ratio 0
run cross100-c64 --concurrency 64 --cross-shard-ratio 1
# Open loop at half the single-transfer peak measured above: p99 from intended send times.
peak=$(python3 -c "import json;print(int(json.load(open('$OUT/single-c64.json'))['transfers_per_sec']))")
run open-half-peak --concurrency 256 --rate $((peak / 2))
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
print("| configuration | transfers/s | requests/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | conserved |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ["single-c1","single-c16","single-c64","batch-100","batch-1000","batch-8000","zipf-c64","hot10-c64","cross0-c64","cross100-c64","open-half-peak"]:
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))
    l = r["latency_ms"]
    errors = sum(r["errors"].values())
    print(f"| {name} | {r['transfers_per_sec']:,.0f} | {r['requests_per_sec']:,.0f} | {l['p50']:.2f} | {l['p99']:.2f} | {l['p999']:.2f} | {l['max']:.2f} | {errors} | {r['conserved']} |")
PY
