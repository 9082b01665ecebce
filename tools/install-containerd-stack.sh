#!/usr/bin/env bash
# Installs what tests/test_containerd.py needs to run converted images the way users do (containerd +
# nydus-snapshotter, lazily pulled, FUSE nydusd), into the cache outside the clone that
# tools/install-nydus-stack.sh uses (NYDUS_PY_TOOLS, default /var/cache/nydus-py-tools), keyed by version and
# reused when present:
#   - Debian's containerd (1.6) and runc, when missing (apt-get; needs root);
#   - containerd-nydus-grpc, nydus-snapshotter v0.6.1, built from the Go module proxy: the release made for
#     nydusd 2.2 and containerd 1.6 (see README, "Run it");
#   - tools/containerd/ (our own Go sources, keyed by their sha256): `nydus-py-pull`, a containerd client that
#     pulls with the layer labels remote snapshotters need (what nerdctl and the CRI plugin do; `ctr images pull`
#     does not, and the Go module proxy refuses nerdctl), and `fsdigest`, the static digest tool put into the
#     test image.
# Go modules and build objects are cached in $cache/go-mod and $cache/go-build. Prints one directory per line,
# for PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${NYDUS_PY_TOOLS:-/var/cache/nydus-py-tools}"
snapshotter_version=v0.6.1
go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
export GOMODCACHE="$cache/go-mod" GOCACHE="$cache/go-build" GOFLAGS="-buildvcs=false" GOTOOLCHAIN=local
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"

if ! command -v containerd >/dev/null || ! command -v runc >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd runc >/dev/null </dev/null >&2
    else
        echo "install-containerd-stack: containerd and runc are missing (apt-get install containerd runc)" >&2
    fi
fi

mkdir -p "$cache"
snap="$cache/nydus-snapshotter-$snapshotter_version"
if [ ! -x "$snap/bin/containerd-nydus-grpc" ]; then
    # `go install pkg@version` refuses modules with replace directives, which v0.6.1's go.mod has: build the
    # module in a scratch copy of its source, with its own go.mod and go.sum
    src="$("$go" mod download -json "github.com/containerd/nydus-snapshotter@$snapshotter_version" |
           sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    work="$(mktemp -d "$cache/.build-snapshotter.XXXXXX")"
    trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
    cp -r "$src/." "$work/"
    chmod -R u+w "$work"
    mkdir -p "$snap.tmp/bin"
    (cd "$work" && CGO_ENABLED=0 "$go" build -p 1 -trimpath -mod=mod \
        -ldflags "-s -w -X github.com/containerd/nydus-snapshotter/version.Version=$snapshotter_version" \
        -o "$snap.tmp/bin/containerd-nydus-grpc" ./cmd/containerd-nydus-grpc) >&2
    rm -rf "$snap" && mv "$snap.tmp" "$snap"
fi

key="$(cd "$here/containerd" && cat go.mod go.sum $(find . -name '*.go' | LC_ALL=C sort) | sha256sum | cut -c1-16)"
ours="$cache/nydus-py-containerd-tools-$key"
if [ ! -x "$ours/bin/nydus-py-pull" ] || [ ! -x "$ours/bin/fsdigest" ]; then
    rm -rf "$ours.tmp" && mkdir -p "$ours.tmp/bin"
    (cd "$here/containerd" && CGO_ENABLED=0 "$go" build -p 1 -trimpath -mod=readonly -ldflags "-s -w" \
        -o "$ours.tmp/bin/" ./cmd/nydus-py-pull ./cmd/fsdigest) >&2
    rm -rf "$ours" && mv "$ours.tmp" "$ours"
fi
echo "$snap/bin"
echo "$ours/bin"
