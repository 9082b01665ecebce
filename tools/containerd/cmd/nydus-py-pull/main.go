// nydus-py-pull pulls and unpacks an image through containerd the way nerdctl and containerd's CRI plugin do
// for remote snapshotters: every layer descriptor gets the `containerd.io/snapshot/cri.*` annotations (image
// reference, manifest digest, layer digest, the image's layers), which the unpacker passes to the snapshotter
// as labels together with the image's own `containerd.io/snapshot/*` layer annotations. nydus-snapshotter needs
// them to serve a Nydus image lazily; `ctr images pull` does not set them.
//
// Usage: nydus-py-pull --address SOCK [--namespace NS] [--snapshotter NAME] [--plain-http] REF
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/remotes/docker/config"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The labels of containerd's pkg/snapshotters (containerd 1.7; in 1.6 they live unexported in pkg/cri/server).
const (
	targetRefLabel            = "containerd.io/snapshot/cri.image-ref"
	targetManifestDigestLabel = "containerd.io/snapshot/cri.manifest-digest"
	targetLayerDigestLabel    = "containerd.io/snapshot/cri.layer-digest"
	targetImageLayersLabel    = "containerd.io/snapshot/cri.image-layers"
	// containerd's labels.Validate: a label (key + value) may hold at most 4096 bytes
	maxLabelSize = 4096
)

// appendInfoHandlerWrapper is containerd 1.7's snapshotters.AppendInfoHandlerWrapper.
func appendInfoHandlerWrapper(ref string) func(images.Handler) images.Handler {
	return func(f images.Handler) images.Handler {
		return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			children, err := f.Handle(ctx, desc)
			if err != nil {
				return nil, err
			}
			switch desc.MediaType {
			case ocispec.MediaTypeImageManifest, images.MediaTypeDockerSchema2Manifest:
				for i := range children {
					c := &children[i]
					if !images.IsLayerType(c.MediaType) {
						continue
					}
					if c.Annotations == nil {
						c.Annotations = map[string]string{}
					}
					c.Annotations[targetRefLabel] = ref
					c.Annotations[targetLayerDigestLabel] = c.Digest.String()
					c.Annotations[targetImageLayersLabel] = layerList(children[i:])
					c.Annotations[targetManifestDigestLabel] = desc.Digest.String()
				}
			}
			return children, nil
		})
	}
}

// layerList is the comma-separated digests of the layers in descs, as many as fit in one label.
func layerList(descs []ocispec.Descriptor) string {
	var digests []string
	size := len(targetImageLayersLabel)
	for _, d := range descs {
		if !images.IsLayerType(d.MediaType) {
			continue
		}
		s := d.Digest.String()
		if size+len(s)+1 > maxLabelSize {
			break
		}
		size += len(s) + 1
		digests = append(digests, s)
	}
	return strings.Join(digests, ",")
}

func main() {
	address := flag.String("address", "/run/containerd/containerd.sock", "containerd's socket")
	namespace := flag.String("namespace", "default", "containerd namespace")
	snapshotter := flag.String("snapshotter", "nydus", "snapshotter to unpack into")
	plainHTTP := flag.Bool("plain-http", false, "talk HTTP, not HTTPS, to the registry")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: nydus-py-pull [--address SOCK] [--namespace NS] [--snapshotter NAME] [--plain-http] REF")
		os.Exit(2)
	}
	ref := flag.Arg(0)
	client, err := containerd.New(*address, containerd.WithDefaultNamespace(*namespace))
	if err != nil {
		fmt.Fprintf(os.Stderr, "nydus-py-pull: %s: %v\n", *address, err)
		os.Exit(2)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), *namespace)
	hosts := config.HostOptions{}
	if *plainHTTP {
		hosts.DefaultScheme = "http"
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, hosts)})
	image, err := client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(*snapshotter),
		containerd.WithImageHandlerWrapper(appendInfoHandlerWrapper(ref)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "nydus-py-pull: %s: %v\n", ref, err)
		os.Exit(1)
	}
	fmt.Printf("%s %s\n", image.Name(), image.Target().Digest)
}
