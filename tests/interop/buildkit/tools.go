//go:build tools

// Package buildkit pins BuildKit's daemon and client for nydus-py's end-to-end test of the drop-in builder
// (tests/test_buildkit.py): tools/install-nydus-stack.sh builds both commands from this module, buildkitd with
// the `nydus` build tag that BuildKit's `compression=nydus` export needs.
package buildkit

import (
	_ "github.com/moby/buildkit/cmd/buildctl"
	_ "github.com/moby/buildkit/cmd/buildkitd"
)
