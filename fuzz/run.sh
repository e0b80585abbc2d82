#!/usr/bin/env bash
# Runs the fuzz targets with cargo-fuzz on the nightly toolchain.
#
#   bash fuzz/run.sh [SECONDS]     (default 300 per target; .ci/run uses a short run)
#
# Installs cargo-fuzz from crates.io when it is missing. Seeds the corpus with the request
# fixtures. Exits 0 with a message when no nightly toolchain is installed.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-300}
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: skipped: no nightly toolchain (cargo +nightly); cargo-fuzz needs one"
    exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
corpus=corpus/connection
mkdir -p "$corpus"
# Seeds: every request fixture, with the four control bytes in front (see fuzz_connection).
for f in ../tests/fixtures/requests/*/*.http; do
    seed="$corpus/seed-$(basename "$f" .http)"
    [[ -f $seed ]] || { printf '\x07\x03\x01\x00'; cat "$f"; } >"$seed"
done
for target in connection; do
    echo "fuzz: $target for $seconds s"
    cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
        tee "/tmp/sgi-fuzz-$target.log" | grep -E "^(#[0-9]+.*DONE|stat::|==|SUMMARY|Done )" || true
    grep -q "^Done " "/tmp/sgi-fuzz-$target.log" || { tail -50 "/tmp/sgi-fuzz-$target.log"; exit 1; }
done
