#!/usr/bin/env bash
# Fuzzes everything the registry reads from the network, each target for
# FUZZ_SECONDS (default 600), two at a time, with the corpora kept in
# fuzz/corpus/<target> (committed). Needs the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). A crash leaves its input in
# fuzz/artifacts/<target>/ and makes this script fail.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-600}"
targets=(event_json event_protobuf discover_request subjects control_input)
cargo +nightly fuzz build -O
status=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    pids=()
    for t in "${targets[@]:i:2}"; do
        cargo +nightly fuzz run -O "$t" -- -max_total_time="$seconds" -max_len=4096 \
            -print_final_stats=1 >"target/fuzz-$t.log" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || status=1; done
done
for t in "${targets[@]}"; do
    echo "== $t: $(grep -E '^stat::number_of_executed_units' "target/fuzz-$t.log" | tail -1)"
done
exit $status
