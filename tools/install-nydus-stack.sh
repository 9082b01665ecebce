#!/usr/bin/env bash
# Installs the real Nydus stack that the tests use as oracles and tools/bench.py as peers, into a cache outside
# the clone (NYDUS_PY_TOOLS, default /var/cache/nydus-py-tools), keyed by version and reused when present:
# - nydus-image and nydusd 2.2.0 from the crates.io package nydus-rs (its only published release; it builds
#   OpenSSL from source, which needs perl and make);
# - nydus-converter-harness: tests/interop/converter, our driver of nydus-snapshotter's converter (Pack, Merge,
#   Unpack as BuildKit calls them), built from the Go module proxy at the version its go.mod pins;
# - buildkitd (with the `nydus` build tag) and buildctl: tests/interop/buildkit pins BuildKit, built likewise.
# nydusify is not installed: the Go module proxy refuses every version of its module (README, "Compatibility").
# Prints the directories that hold the binaries, one a line, for PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${NYDUS_PY_TOOLS:-/var/cache/nydus-py-tools}"
mkdir -p "$cache"

version=2.2.0
root="$cache/nydus-rs-$version"
if [ ! -x "$root/bin/nydusd" ] || [ ! -x "$root/bin/nydus-image" ]; then
    # --locked: the crate's own Cargo.lock, which builds with current Rust
    CARGO_TARGET_DIR="$cache/cargo-target-nydus-rs-$version" \
        cargo install nydus-rs --version "$version" --locked --root "$root" >&2
    rm -rf "$cache/cargo-target-nydus-rs-$version"
fi
echo "$root/bin"

harness_src="$here/tests/interop/converter"
key="$(cat "$harness_src/go.mod" "$harness_src/go.sum" "$harness_src/main.go" | sha256sum | cut -c1-16)"
harness="$cache/converter-harness-$key"
if [ ! -x "$harness/nydus-converter-harness" ]; then
    (cd "$harness_src" && GOMODCACHE="$cache/go-mod" GOCACHE="$cache/go-build" GOFLAGS=-mod=readonly \
        go build -p 1 -o "$harness/nydus-converter-harness.tmp" . >&2)
    mv "$harness/nydus-converter-harness.tmp" "$harness/nydus-converter-harness"
fi
echo "$harness"

buildkit_src="$here/tests/interop/buildkit"
key="$(cat "$buildkit_src/go.mod" "$buildkit_src/go.sum" | sha256sum | cut -c1-16)"
buildkit="$cache/buildkit-$key"
if [ ! -x "$buildkit/buildkitd" ] || [ ! -x "$buildkit/buildctl" ]; then
    (cd "$buildkit_src" && GOMODCACHE="$cache/go-mod" GOCACHE="$cache/go-build" GOFLAGS=-mod=readonly \
        go build -p 1 -tags nydus -o "$buildkit/.new/" github.com/moby/buildkit/cmd/buildkitd \
        github.com/moby/buildkit/cmd/buildctl >&2)
    mv "$buildkit/.new/buildkitd" "$buildkit/.new/buildctl" "$buildkit/" && rmdir "$buildkit/.new"
fi
echo "$buildkit"
