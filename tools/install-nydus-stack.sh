#!/usr/bin/env bash
# Installs the real Nydus stack that the tests use as oracles and tools/bench.py as peers, into a cache outside
# the clone (NYDUS_PY_TOOLS, default /var/cache/nydus-py-tools), keyed by version and reused when present:
# nydus-image and nydusd 2.2.0 from the crates.io package nydus-rs (its only published release; it builds
# OpenSSL from source, which needs perl and make). nydusify is not installed: the Go module proxy refuses
# every version of its module (see README, "Compatibility").
# Prints the directory that holds the binaries, for PATH.
set -euo pipefail
cache="${NYDUS_PY_TOOLS:-/var/cache/nydus-py-tools}"
version=2.2.0
root="$cache/nydus-rs-$version"
if [ ! -x "$root/bin/nydusd" ] || [ ! -x "$root/bin/nydus-image" ]; then
    mkdir -p "$cache"
    # --locked: the crate's own Cargo.lock, which builds with current Rust
    CARGO_TARGET_DIR="$cache/cargo-target-nydus-rs-$version" \
        cargo install nydus-rs --version "$version" --locked --root "$root" >&2
    rm -rf "$cache/cargo-target-nydus-rs-$version"
fi
echo "$root/bin"
