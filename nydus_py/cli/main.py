"""The `nydus-py` command line: options -> one library call -> a printed summary.

Exit statuses (docs/design.md): 0 done; 1 a verdict (check found a defect); 2 the command could not do
its job (bad options, unreadable or malformed input, I/O failure); 3 an unexpected exception (our bug).
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from nydus_py.build.config import (BuildConfig, Compressor, Digester, check_chunk_size, read_prefetch_patterns,
                                   parse_size)
from nydus_py.cli.interrupt import invoke, sigterm_interrupts, silence_stdout
from nydus_py.cli.progress import ProgressBar, progress_bar
from nydus_py.cli.service import serve, worker
from nydus_py.errors import NydusError, UsageError
from nydus_py.sources import WhiteoutSpec, XattrNamespace
from nydus_py.util.fsutil import refuse_clashes, reserved_output
from nydus_py.util.gcpause import cyclic_gc_paused

if TYPE_CHECKING:
    from nydus_py.build.chunkdict import ChunkDict
    from nydus_py.oci.publish import BuildResult

# Each command imports what it uses inside its function (building a directory never loads the registry
# client), so nydus-py starts fast; the imports are plain, so the call graph stays visible.

_Command = TypeVar("_Command", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_VERDICT = 1
EXIT_FAILED = 2
EXIT_BUG = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors.")
def cli(debug: bool) -> None:
    """Build, inspect and check Nydus (RAFS v6) container images."""


def _chunk_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return check_chunk_size(parse_size(value))
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None


def _prefetch(patterns: str | None, no_prefetch: bool) -> tuple[bytes, ...]:
    if no_prefetch:
        if patterns is not None:
            raise UsageError("--prefetch-patterns and --no-prefetch exclude each other")
        return ()
    if patterns is None:
        return (b"/",)
    if patterns == "-":
        return read_prefetch_patterns(sys.stdin.buffer, "--prefetch-patterns -")
    try:
        with open(patterns, "rb") as f:
            return read_prefetch_patterns(f, patterns)
    except OSError as exc:
        raise UsageError(f"{patterns}: cannot read prefetch patterns: {exc.strerror}") from exc


def _output_options(fn: _Command) -> _Command:
    """Options shared by build and merge: where the result goes and what the merged bootstrap prefetches."""
    for option in reversed([
        click.option("-o", "--output", "outdir", required=True, type=click.Path(path_type=Path),
                     help="Output directory: blobs/sha256/<blob id> and bootstrap."),
        click.option("--bootstrap", "extra_bootstrap", type=click.Path(path_type=Path),
                     help="Also write a copy of the merged bootstrap here."),
        click.option("--output-json", type=click.Path(path_type=Path), help="Write the result as JSON here."),
        click.option("--prefetch-patterns", help="File ('-': stdin) of absolute paths to prefetch (default: /)."),
        click.option("--no-prefetch", is_flag=True, help="Write no prefetch table."),
    ]):
        fn = option(fn)
    return fn


def _registry_options(fn: _Command) -> _Command:
    """Options for commands that talk to registries."""
    for option in reversed([
        click.option("--creds", help="USER:PASSWORD for the registries (default: ~/.docker/config.json)."),
        click.option("--plain-http", is_flag=True, help="Talk HTTP, not HTTPS, to the registries."),
        click.option("--insecure", is_flag=True, help="Do not verify the registries' TLS certificates."),
    ]):
        fn = option(fn)
    return fn


def _chunk_dict_options(fn: _Command) -> _Command:
    """Options of commands that build with a chunk dictionary."""
    for option in reversed([
        click.option("--chunk-dict", "chunk_dict", metavar="DICT",
                     help="Reference chunks a dictionary has instead of storing them: a Nydus image (oci:DIR[:TAG], "
                          "docker://REF), a bootstrap or a layer blob (bootstrap=PATH works too)."),
        click.option("--chunk-dict-blob-dir", type=click.Path(path_type=Path),
                     help="Where a bootstrap dictionary's blobs are (default: beside it, and its blobs/sha256/)."),
    ]):
        fn = option(fn)
    return fn


def _load_chunk_dict(chunk_dict: str | None, blob_dir: Path | None, creds: str | None, plain_http: bool,
                     insecure: bool) -> ChunkDict | None:
    if chunk_dict is None:
        if blob_dir is not None:
            raise UsageError("--chunk-dict-blob-dir needs --chunk-dict")
        return None
    from nydus_py.oci.chunkdict import open_chunk_dict
    from nydus_py.oci.images import RegistryOptions

    return open_chunk_dict(chunk_dict, RegistryOptions(creds=creds, plain_http=plain_http, insecure=insecure),
                           blob_dir)


def _build_config(compressor: str, digester: str, chunk_size: int, jobs: int, whiteout_spec: str,
                  overlay_xattr_ns: str, cross_layer_dedup: bool, prefetch: tuple[bytes, ...],
                  progress: ProgressBar | None = None, chunk_dict: ChunkDict | None = None) -> BuildConfig:
    return BuildConfig(compressor=Compressor(compressor), digester=Digester(digester), chunk_size=chunk_size,
                       jobs=jobs, whiteout_spec=WhiteoutSpec(whiteout_spec),
                       overlay_xattr_ns=XattrNamespace(overlay_xattr_ns), prefetch_patterns=prefetch,
                       cross_layer_dedup=cross_layer_dedup, chunk_dict=chunk_dict, progress=progress)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode() + b"\n"


def _report(result: BuildResult, write_json: Callable[[bytes], None]) -> None:
    write_json(_json(result.to_json()))
    click.echo(f"bootstrap {result.bootstrap}")
    for blob in result.layers:
        unused = "" if blob.referenced else ", not referenced"
        click.echo(f"blob      {blob.path} ({blob.info.compressed_size} bytes, {blob.info.chunk_count} chunks{unused})")
    stats = result.stats
    seconds = result.timings["total"]
    rate = stats.bytes_in / seconds / (1 << 20) if seconds else 0.0
    click.echo(f"{result.entries} entries, {stats.files} files, {stats.bytes_in} bytes -> {stats.stored} chunks "
               f"({stats.dedup_hits} dedup hits) in {seconds:.3f}s ({rate:.1f} MiB/s)")


def _build_options(fn: _Command) -> _Command:
    """Options shared by build and convert: how layers become blobs."""
    for option in reversed([
        click.option("--compressor", type=click.Choice([c.value for c in Compressor]), default=Compressor.ZSTD.value,
                     show_default=True, help="Chunk compression."),
        click.option("--digester", type=click.Choice([d.value for d in Digester]), default=Digester.BLAKE3.value,
                     show_default=True, help="Chunk digest algorithm."),
        click.option("--chunk-size", default="1MiB", callback=_chunk_size, show_default=True,
                     help="Power of two from 4KiB to 16MiB (e.g. 1MiB, 0x100000)."),
        click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, help="Worker threads (0: all cores)."),
        click.option("--whiteout-spec", type=click.Choice([w.value for w in WhiteoutSpec]),
                     default=WhiteoutSpec.AUTO.value, show_default=True,
                     help="How layers mark removals (auto: overlayfs for directories, oci for tars)."),
        click.option("--overlay-xattr-ns", type=click.Choice([n.value for n in XattrNamespace]),
                     default=XattrNamespace.TRUSTED.value, show_default=True,
                     help="xattr namespace of the overlayfs mount an upper directory comes from (user: userxattr)."),
        click.option("--cross-layer-dedup", is_flag=True,
                     help="Reference chunks already stored in lower layers' blobs (layers stop being self-contained)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("layers", nargs=-1, required=True)
@_output_options
@_build_options
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="Image config JSON to describe the image (rootfs and history are filled in).")
@click.option("--platform", help="OS/ARCH[/VARIANT] of the image (default: this machine's, linux).")
@click.option("--tag", help="Tag of the image in OUTDIR's index.json.")
@_chunk_dict_options
@_registry_options
def build(layers: tuple[str, ...], outdir: Path, compressor: str, digester: str, chunk_size: int, jobs: int,
          whiteout_spec: str, overlay_xattr_ns: str, cross_layer_dedup: bool, extra_bootstrap: Path | None,
          output_json: Path | None, prefetch_patterns: str | None, no_prefetch: bool, config_file: Path | None,
          platform: str | None, tag: str | None, chunk_dict: str | None, chunk_dict_blob_dir: Path | None,
          creds: str | None, plain_http: bool, insecure: bool, quiet: bool) -> None:
    """Build LAYERS (lowest first) into one blob per layer and a merged RAFS v6 bootstrap in OUTDIR.

    Each layer is a directory, an overlayfs upper directory, or an OCI layer tar (plain, gzip or zstd;
    '-' reads stdin). OUTDIR may be docker://REGISTRY/REPO:TAG to push the image instead.
    """
    dictionary = _load_chunk_dict(chunk_dict, chunk_dict_blob_dir, creds, plain_http, insecure)
    progress = progress_bar(quiet, output_json, list(layers))
    config = _build_config(compressor, digester, chunk_size, jobs, whiteout_spec, overlay_xattr_ns,
                           cross_layer_dedup, _prefetch(prefetch_patterns, no_prefetch), progress, dictionary)
    refuse_clashes({"--output-json": output_json, "--bootstrap": extra_bootstrap},
                   {f"layer {layer}": layer for layer in layers if layer != "-"})
    try:
        with reserved_output(extra_bootstrap) as write_bootstrap, reserved_output(output_json) as write_json:
            _build(layers, outdir, config, write_bootstrap if extra_bootstrap else None, write_json, config_file,
                   platform, tag, creds, plain_http, insecure)
    finally:
        if progress is not None:
            progress.close()


def _build(layers: tuple[str, ...], outdir: Path, config: BuildConfig,
           write_bootstrap: Callable[[bytes], None] | None, write_json: Callable[[bytes], None],
           config_file: Path | None, platform: str | None, tag: str | None, creds: str | None, plain_http: bool,
           insecure: bool) -> None:
    from nydus_py.oci.publish import ImageOptions, build_image
    from nydus_py.oci.ref import output_ref
    from nydus_py.oci.images import RegistryOptions

    image = ImageOptions(config_file=config_file, platform=platform, tag=tag)
    registry = RegistryOptions(creds=creds, plain_http=plain_http, insecure=insecure)
    result = build_image(list(layers), output_ref(os.fspath(outdir)), config, extra_bootstrap=write_bootstrap,
                         image=image, registry=registry)
    _report(result, write_json)
    if result.push is not None:
        click.echo(f"pushed to {result.pushed_to}: {result.push.uploaded} blobs uploaded, "
                   f"{result.push.existing} already there")


@cli.command()
@click.argument("source")
@click.argument("target", required=False)
@_build_options
@click.option("--output-json", type=click.Path(path_type=Path), help="Write the result as JSON here.")
@click.option("--prefetch-patterns", help="File ('-': stdin) of absolute paths to prefetch (default: /).")
@click.option("--no-prefetch", is_flag=True, help="Write no prefetch table.")
@click.option("--platform", "platforms", multiple=True, help="Convert only OS/ARCH[/VARIANT] (repeatable).")
@click.option("--docker-media-types", is_flag=True,
              help="Keep the Docker manifest family (for registries that need it). containers/image tools such as "
                   "skopeo reject Nydus layers in Docker manifests.")
@click.option("--merge-platform", is_flag=True,
              help="Write one index with the original and the Nydus manifests.")
@click.option("--oci-ref", is_flag=True,
              help="zran: reference each gzip layer in place (blobs hold only metadata; nydusd reads the original "
                   "layers, which must stay in the target repository). Implies --digester sha256.")
@click.option("--with-referrer", is_flag=True,
              help="Make each Nydus manifest refer to its source manifest (OCI 1.1 `subject`; a registry without "
                   "the referrers API gets the sha256-<hex> tag index).")
@_chunk_dict_options
@_registry_options
@click.pass_context
def convert(ctx: click.Context, source: str, target: str | None, compressor: str, digester: str, chunk_size: int,
            jobs: int, whiteout_spec: str, overlay_xattr_ns: str, cross_layer_dedup: bool, output_json: Path | None,
            prefetch_patterns: str | None, no_prefetch: bool, platforms: tuple[str, ...], docker_media_types: bool,
            merge_platform: bool, oci_ref: bool, with_referrer: bool, chunk_dict: str | None,
            chunk_dict_blob_dir: Path | None, creds: str | None, plain_http: bool, insecure: bool,
            quiet: bool) -> None:
    """Convert an image into a Nydus image.

    SOURCE is oci:DIR[:TAG], oci-archive:FILE[:TAG] (docker buildx --output type=oci), docker-archive:FILE
    (docker save) or docker://REGISTRY/REPO[:TAG|@DIGEST]; TARGET is oci:DIR[:TAG] or docker://REGISTRY/REPO[:TAG]
    (default for a docker:// SOURCE: its own repository, tag TAG-nydus).
    """
    from nydus_py.oci.convert import ConvertOptions
    from nydus_py.oci.convert import convert as convert_image
    from nydus_py.oci.ref import default_target, parse_image_ref, parse_target_ref
    from nydus_py.oci.images import RegistryOptions

    source_ref = parse_image_ref(source)
    target_ref = parse_target_ref(target) if target is not None else default_target(source_ref)
    if oci_ref and ctx.get_parameter_source("digester") is click.core.ParameterSource.DEFAULT:
        digester = Digester.SHA256.value
    if oci_ref and chunk_dict is not None:  # nydus-snapshotter builds zran layers without one either
        raise UsageError("--oci-ref and --chunk-dict exclude each other")
    dictionary = _load_chunk_dict(chunk_dict, chunk_dict_blob_dir, creds, plain_http, insecure)
    progress = progress_bar(quiet, output_json)
    config = _build_config(compressor, digester, chunk_size, jobs, whiteout_spec, overlay_xattr_ns,
                           cross_layer_dedup, _prefetch(prefetch_patterns, no_prefetch), progress, dictionary)
    opts = ConvertOptions(platforms=platforms, docker_types=docker_media_types, merge_platform=merge_platform,
                          oci_ref=oci_ref, with_referrer=with_referrer)
    registry = RegistryOptions(creds=creds, plain_http=plain_http, insecure=insecure)
    refuse_clashes({"--output-json": output_json}, {"SOURCE": source_ref.path})
    try:
        with reserved_output(output_json) as write_json:
            result = convert_image(source_ref, target_ref, config, opts, registry)
            write_json(_json(result.to_json()))
    finally:
        if progress is not None:
            progress.close()
    for warning in result.warnings:
        click.echo(f"nydus-py: warning: {warning}", err=True)
    if result.already_nydus:
        click.echo(f"{source}: already a Nydus image; nothing converted")
        return
    for name, built in result.platforms:
        click.echo(f"{name}: {len(built.layers)} blob layers, bootstrap {built.bootstrap}")
    if result.reused_layers:
        click.echo(f"reused {result.reused_layers} layers already converted in the target "
                   f"({result.reused_bytes} source bytes not converted)")
    if result.push is not None:
        click.echo(f"pushed {result.push.uploaded} blobs ({result.push.uploaded_bytes} bytes), "
                   f"{result.push.existing} already there ({result.push.existing_bytes} bytes), "
                   f"{result.push.mounted} mounted")
    assert result.top is not None
    click.echo(f"{target_ref}: {result.top.media_type} {result.top.digest}")


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--output", "target", required=True, help="oci:DIR[:TAG] or docker://REGISTRY/REPO[:TAG].")
@click.option("--min-count", type=click.IntRange(min=1), default=2, show_default=True,
              help="Keep the chunks at least this many of the images hold.")
@click.option("--max-blob-size", default="1GiB", show_default=True,
              help="About how many compressed bytes one dictionary blob holds (e.g. 512MiB).")
@click.option("--compressor", type=click.Choice([c.value for c in Compressor]), default=Compressor.ZSTD.value,
              show_default=True, help="Compression of the dictionary's chunks.")
@click.option("--output-json", type=click.Path(path_type=Path), help="Write the result as JSON here.")
@_registry_options
def chunkdict(images: tuple[str, ...], target: str, min_count: int, max_blob_size: str, compressor: str,
              output_json: Path | None, creds: str | None, plain_http: bool, insecure: bool) -> None:
    """Make a chunk dictionary image of the chunks Nydus IMAGES (oci:DIR[:TAG], docker://REF) share.

    Use it with `build`, `convert` or nydus-image `--chunk-dict`: their images then reference these chunks
    instead of storing them again. Chunk size and digester are the images'.
    """
    from nydus_py.oci.chunkdict import make_chunk_dict
    from nydus_py.oci.images import RegistryOptions
    from nydus_py.oci.ref import parse_image_ref, parse_target_ref

    refs = [parse_image_ref(image) for image in images]
    with reserved_output(output_json) as write_json:
        result = make_chunk_dict(refs, parse_target_ref(target), BuildConfig(compressor=Compressor(compressor)),
                                 min_count=min_count, max_blob_size=parse_size(max_blob_size),
                                 registry=RegistryOptions(creds=creds, plain_http=plain_http, insecure=insecure))
        write_json(_json(result.to_json()))
    blobs = len(result.image.layers)
    click.echo(f"chunk dictionary: {_count(result.chunks, 'chunk')} ({result.bytes} bytes) in {_count(blobs, 'blob')}")
    for name, chunks, size in result.savings:
        click.echo(f"{name}: {chunks} of its chunks ({size} compressed bytes) are in it")
    assert result.image.manifest is not None
    click.echo(f"{target}: {result.image.manifest.media_type} {result.image.manifest.digest}")


@cli.command()
@click.argument("source")
@click.argument("target")
@_registry_options
def copy(source: str, target: str, creds: str | None, plain_http: bool, insecure: bool) -> None:
    """Copy an image as it is (same digests) between oci:DIR[:TAG] and docker://REGISTRY/REPO[:TAG]."""
    from nydus_py.oci.copy import copy_image
    from nydus_py.oci.ref import parse_image_ref, parse_target_ref
    from nydus_py.oci.images import RegistryOptions

    top = copy_image(parse_image_ref(source), parse_target_ref(target),
                     RegistryOptions(creds=creds, plain_http=plain_http, insecure=insecure))
    click.echo(f"{target}: {top.media_type} {top.digest}")


@cli.command()
@click.argument("layers", nargs=-1, required=True, type=click.Path(path_type=Path))
@_output_options
@click.option("--blob-dir", type=click.Path(path_type=Path),
              help="Where the blobs of plain bootstraps are (files named by blob id, or an OCI blobs/sha256/).")
def merge(layers: tuple[Path, ...], outdir: Path, blob_dir: Path | None, extra_bootstrap: Path | None,
          output_json: Path | None, prefetch_patterns: str | None, no_prefetch: bool) -> None:
    """Merge LAYERS (layer blobs, or bootstraps with --blob-dir; lowest first) into one bootstrap in OUTDIR."""
    from nydus_py.oci.publish import merge_images

    config = BuildConfig(prefetch_patterns=_prefetch(prefetch_patterns, no_prefetch))
    refuse_clashes({"--output-json": output_json, "--bootstrap": extra_bootstrap},
                   {f"layer {layer}": layer for layer in layers})
    with reserved_output(extra_bootstrap) as write_bootstrap, reserved_output(output_json) as write_json:
        _report(merge_images(list(layers), outdir, config, blob_dir=blob_dir,
                             extra_bootstrap=write_bootstrap if extra_bootstrap else None), write_json)


@cli.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.argument("path", required=False, default="/")
@click.option("--blob-dir", type=click.Path(path_type=Path), help="Where the blobs of a bare bootstrap are.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def inspect(image: Path, path: str, blob_dir: Path | None, as_json: bool) -> None:
    """Describe IMAGE (a bootstrap, a blob with an inline bootstrap, or an output directory)."""
    from nydus_py.oci.nydus import open_first_image
    from nydus_py.read.inspect import listing as report_listing
    from nydus_py.read.inspect import summary as report_summary
    from nydus_py.read.inspect import summary_text as report_summary_text

    opened = open_first_image(image, blob_dir)
    if as_json:
        doc = report_summary(opened.bootstrap, opened.dictionary_blobs)
        doc["listing"] = report_listing(opened.bootstrap, path.encode())
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    for line in report_summary_text(opened.bootstrap, opened.dictionary_blobs):
        click.echo(line)
    click.echo("")
    for line in report_listing(opened.bootstrap, path.encode()):
        click.echo(line)


@cli.command()
@click.argument("image")
@click.option("--blob-dir", type=click.Path(path_type=Path), help="Where the blobs of a bare bootstrap are.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--require-data", is_flag=True, help="A blob that is not found is a defect (default: a note, and "
              "the verdict says the data was not checked).")
@click.option("--source", metavar="SOURCE",
              help="Also compare IMAGE's files (metadata and data) with the OCI image it was converted from: "
                   "oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE or docker://REGISTRY/REPO[:TAG].")
@_registry_options
def check(image: str, blob_dir: Path | None, as_json: bool, require_data: bool, source: str | None,
          creds: str | None, plain_http: bool, insecure: bool) -> int:
    """Check IMAGE: every rule nydusd and the kernel apply, and every chunk of every blob found; with --source,
    also whether its files are those of SOURCE. IMAGE may be docker://REGISTRY/REPO[:TAG] too.

    Exit 0 when sound (and equal to SOURCE), 1 with one line per defect or difference, 2 when the check cannot run.
    """
    from nydus_py.oci.images import RegistryOptions
    from nydus_py.oci.ref import parse_image_ref
    from nydus_py.oci.verify import check_with_source

    source_ref = parse_image_ref(source) if source is not None else None
    checked = check_with_source(image, source_ref, RegistryOptions(creds=creds, plain_http=plain_http,
                                                                   insecure=insecure),
                                blob_dir=blob_dir, require_data=require_data)
    report, verified = checked.report, checked.verify
    good = report.sound and (verified is None or verified.equal)
    places = sorted({str(p.parent) for p in report.blob_files})
    if as_json:
        doc = {"sound": report.sound, "data_checked": not report.missing_blobs,
               "defects": [str(d) for d in report.defects], "notes": report.notes,
               "missing_blobs": report.missing_blobs, "blob_dirs": places, "inodes": report.inodes,
               "blobs_checked": report.blobs_checked, "chunks_verified": report.chunks_verified}
        if verified is not None:
            doc.update(verified.to_json())
        click.echo(json.dumps(doc, indent=2))
        return EXIT_OK if good else EXIT_VERDICT
    for defect in report.defects:
        click.echo(f"defect: {defect}")
    for line in verified.lines() if verified is not None else []:
        click.echo(line)
    for note in report.notes:
        click.echo(f"note: {note}")
    for what in report.missing:
        click.echo(f"note: {what} not found: its data was not checked")
    for place in places:
        click.echo(f"note: blob data read from {place}")
    if not report.sound:
        verdict = f"{len(report.defects)} defect(s)"
    elif report.missing_blobs:
        verdict = (f"metadata sound, data NOT checked: {len(report.missing_blobs)} blob(s) not found (give --blob-dir; "
                   "--require-data makes this a defect)")
    else:
        verdict = "sound"
    click.echo(f"{image}: {verdict} ({report.inodes} inodes, {report.blobs_checked} blobs, "
               f"{report.chunks_verified} chunks verified)")
    if verified is not None:
        click.echo(f"{image}: {verified.verdict()}")
    return EXIT_OK if good else EXIT_VERDICT


@cli.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-o", "--output", "target", required=True, type=click.Path(path_type=Path),
              help="OUT.tar for a tar, else a directory (new or empty).")
@click.option("--blob-dir", type=click.Path(path_type=Path), help="Where the blobs of a bare bootstrap are.")
def unpack(image: Path, target: Path, blob_dir: Path | None) -> None:
    """Write IMAGE's files to a directory or an OCI-compatible tar."""
    from nydus_py.oci.nydus import open_first_image
    from nydus_py.read.unpack import unpack as unpack_image

    count = unpack_image(open_first_image(image, blob_dir), target)
    click.echo(f"{target}: {count} entries")


@cli.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Where device images are kept "
              "(default: $XDG_CACHE_HOME/nydus-py).")
@click.option("--blob-dir", type=click.Path(path_type=Path), help="Where the blobs of a bare bootstrap are.")
@click.option("--no-check", is_flag=True, help="Skip the structural checks of the bootstrap before mount(2). "
              "Dangerous: the kernel then parses metadata nobody checked (only for images you trust).")
def mount(image: Path, mountpoint: Path, cache_dir: Path | None, blob_dir: Path | None, no_check: bool) -> None:
    """Mount IMAGE read-only with the kernel's EROFS driver (no nydusd; needs root). The bootstrap must pass
    the structural checks of `check` first, and each blob file must hash to its id."""
    from nydus_py.read.mount import default_cache_dir, mount_image, require_root
    from nydus_py.oci.nydus import open_first_image

    require_root()
    devices = mount_image(open_first_image(image, blob_dir), mountpoint, cache_dir or default_cache_dir(),
                          check=not no_check)
    click.echo(f"{mountpoint}: mounted ({len(devices)} device images)")


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
def umount(mountpoint: Path) -> None:
    """Unmount a mount made by `nydus-py mount`."""
    from nydus_py.read.kmount import umount as kernel_umount

    kernel_umount(mountpoint)
    click.echo(f"{mountpoint}: unmounted")


cli.add_command(serve)
cli.add_command(worker)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI and map every failure to the project's exit statuses."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        args = ["--help"]
    debug = "--debug" in args
    try:
        # images are millions of objects without cycles (nydus_py/util/gcpause.py)
        with sigterm_interrupts(), cyclic_gc_paused():
            status = invoke(cli, args, "nydus-py")
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return EXIT_FAILED
    except click.exceptions.Abort:
        click.echo("nydus-py: interrupted", err=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        click.echo("nydus-py: interrupted", err=True)
        return EXIT_FAILED
    except NydusError as exc:
        click.echo(f"nydus-py: {exc}", err=True)
        return EXIT_FAILED
    except OSError as exc:
        if exc.errno == errno.EPIPE and exc.filename is None:  # stdout's reader went away
            silence_stdout()
            click.echo("nydus-py: standard output: the reader went away (broken pipe)", err=True)
            return EXIT_FAILED
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename else ""
        click.echo(f"nydus-py: {where}{exc.strerror or exc}", err=True)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if debug:
            raise
        click.echo(f"nydus-py: internal error (a bug in nydus-py): {type(exc).__name__}: {exc}", err=True)
        return EXIT_BUG
    return status if isinstance(status, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
