// Command converter drives nydus-snapshotter's converter (pkg/converter: Pack, Merge, Unpack) the way BuildKit
// and nerdctl do, with the builder binary given by -builder: the real nydus-image or nydus-py-image. It is a
// test harness of nydus-py (tests/test_drop_in_builder.py).
//
//	converter pack   -builder B [-compressor C] [-chunk-size S] [-prefetch P] [-oci-ref] [-chunk-dict BOOT]
//	                 -out BLOB LAYER.tar
//	converter merge  -builder B [-oci-ref] [-chunk-dict BOOT] -out BOOTSTRAP.tar BLOB[=ORIGINAL-DIGEST]...
//	                 (prints the blob digests the bootstrap names)
//	converter unpack -builder B -out LAYER.tar BLOB
//
// With -oci-ref, pack reads a gzip layer and writes its zran meta blob (BuildKit's `oci-ref`), and merge
// takes each meta blob with the digest of the gzip layer it references (the `nydus-ref` annotation). With
// -chunk-dict, both pass the chunk dictionary bootstrap (ChunkDictPath).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/nydus-snapshotter/pkg/converter"
	"github.com/opencontainers/go-digest"
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: converter pack|merge|unpack ..."))
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	builder := flags.String("builder", "nydus-image", "the nydus-image compatible builder")
	out := flags.String("out", "", "output file")
	compressor := flags.String("compressor", "", "blob compressor")
	chunkSize := flags.String("chunk-size", "", "chunk size")
	prefetch := flags.String("prefetch", "", "prefetch patterns, one a line")
	workDir := flags.String("work-dir", "", "the converter's work directory")
	ociRef := flags.Bool("oci-ref", false, "zran: reference gzip layers in place")
	chunkDict := flags.String("chunk-dict", "", "a chunk dictionary bootstrap")
	if err := flags.Parse(os.Args[2:]); err != nil {
		fail(err)
	}
	ctx := context.Background()
	dest, err := os.Create(*out)
	if err != nil {
		fail(err)
	}
	defer dest.Close()
	switch os.Args[1] {
	case "pack":
		err = pack(ctx, dest, flags.Arg(0), converter.PackOption{
			WorkDir: *workDir, BuilderPath: *builder, FsVersion: "6", Compressor: *compressor,
			ChunkSize: *chunkSize, PrefetchPatterns: *prefetch, OCIRef: *ociRef, ChunkDictPath: *chunkDict,
		})
	case "merge":
		err = merge(ctx, dest, flags.Args(), converter.MergeOption{
			WorkDir: *workDir, BuilderPath: *builder, FsVersion: "6", WithTar: true, OCI: true,
			PrefetchPatterns: *prefetch, OCIRef: *ociRef, ChunkDictPath: *chunkDict,
		})
	case "unpack":
		err = unpack(ctx, dest, flags.Arg(0), converter.UnpackOption{
			WorkDir: *workDir, BuilderPath: *builder, Compressor: "uncompressed",
		})
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func pack(ctx context.Context, dest io.Writer, layer string, opt converter.PackOption) error {
	src, err := os.Open(layer)
	if err != nil {
		return err
	}
	defer src.Close()
	w, err := converter.Pack(ctx, dest, opt)
	if err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	if _, err := io.Copy(w, src); err != nil {
		w.Close()
		return fmt.Errorf("pack: copy layer: %w", err)
	}
	return w.Close()
}

func merge(ctx context.Context, dest io.Writer, blobs []string, opt converter.MergeOption) error {
	var layers []converter.Layer
	for _, arg := range blobs {
		path, original, hasOriginal := strings.Cut(arg, "=")
		var originalDigest *digest.Digest
		if hasOriginal {
			parsed, err := digest.Parse(original)
			if err != nil {
				return err
			}
			originalDigest = &parsed
		}
		ra, err := local.OpenReader(path)
		if err != nil {
			return err
		}
		defer ra.Close()
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		dgst, err := digest.FromReader(f)
		f.Close()
		if err != nil {
			return err
		}
		layers = append(layers, converter.Layer{Digest: dgst, OriginalDigest: originalDigest, ReaderAt: ra})
	}
	digests, err := converter.Merge(ctx, layers, dest, opt)
	if err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(digests)
}

func unpack(ctx context.Context, dest io.Writer, blob string, opt converter.UnpackOption) error {
	ra, err := local.OpenReader(blob)
	if err != nil {
		return err
	}
	defer ra.Close()
	if err := converter.Unpack(ctx, ra, dest, opt); err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	return nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "converter:", err)
	os.Exit(1)
}
