"""`nydus-py-image`: the part of nydus-image's command line that BuildKit and nydus-snapshotter's converter call.

The converter (nydus-snapshotter `pkg/converter`: `tool/builder.go`, `tool/feature.go`, `convert_unix.go`) runs
the binary named by `NYDUS_BUILDER`: `create -h` to detect features (the text must name `--type` and `tar-rafs`,
and must not name options we lack, which it would then pass); `create --type tar-rafs --blob FIFO
--blob-inline-meta --features blob-toc --whiteout-spec none ...` with the layer tar on another FIFO and the prefetch
patterns on stdin; `merge --bootstrap OUT --output-json J BOOT...` over bootstraps named by their layer digest;
`unpack --bootstrap B --blob DATA --output FIFO`; `check`. Unlike `nydus-py`, this command follows nydus-image's
conventions: the blob and the unpacked tar are written in place, strictly sequentially (they are FIFOs the caller
reads); exit 1 on errors and 2 on usage errors; a merged blob table takes sizes and TOC digests from the flags or
the inline tables, as nydus-image does (docs/design.md, "Outputs and results").
"""

from __future__ import annotations

import errno
import json
import os
import sys
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import click

from nydus_py.format import rafs
from nydus_py.image import is_blob_digest
from nydus_py.build.config import (BuildConfig, Compressor, Digester, check_chunk_size, read_prefetch_patterns,
                                   parse_size)
from nydus_py.cli.interrupt import invoke, sigterm_interrupts, silence_stdout
from nydus_py.errors import NydusError, UsageError
from nydus_py.sources import WhiteoutSpec
from nydus_py.util.fsutil import output_file, refuse_clashes, reserved_output
from nydus_py.util.gcpause import cyclic_gc_paused


EXIT_ERROR = 1  # nydus-image: anyhow errors
EXIT_USAGE = 2  # nydus-image: clap usage errors
_HELP = {"help_option_names": ["-h", "--help"]}


def _version() -> str:
    try:
        return version("nydus-py")
    except PackageNotFoundError:
        return "unknown"


def _log_level(func: Any) -> Any:
    return click.option("-l", "--log-level", default="info", show_default=True,
                        type=click.Choice(["trace", "debug", "info", "warn", "error"]),
                        help="Log level (accepted for compatibility; messages go to stderr).")(func)


@click.group(context_settings=_HELP, invoke_without_command=True)
@click.option("-V", "--version", "show_version", is_flag=True, help="Print version information.")
@click.pass_context
def cli(ctx: click.Context, show_version: bool) -> None:
    """nydus-image compatible builder for BuildKit and nydus-snapshotter (NYDUS_BUILDER=nydus-py-image)."""
    if show_version:
        click.echo(f"Version: \t{_version()} (nydus-py)\nGit Commit: \tunknown\nProfile: \trelease")
    elif ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _prefetch_patterns(policy: str) -> tuple[bytes, ...]:
    """`--prefetch-policy fs`: absolute paths on stdin, one a line (nydus-image reads them the same way)."""
    return read_prefetch_patterns(sys.stdin.buffer, "--prefetch-policy fs (stdin)") if policy == "fs" else ()


@cli.command(context_settings=_HELP)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-t", "--type", "--source-type", "source_type", default="dir-rafs", show_default=True,
              type=click.Choice(["directory", "dir-rafs", "tar-rafs", "targz-ref"]),
              help="Conversion type: a directory (dir-rafs), an OCI layer tar stream, plain, gzip or zstd "
                   "(tar-rafs), or a gzip layer referenced in place (targz-ref: the blob holds only metadata; "
                   "gzip chunks, sha256 digests).")
@click.option("-b", "--blob", "blob", type=click.Path(path_type=Path), help="Where the data blob is written "
              "(may be a FIFO: written sequentially, in place).")
@click.option("--blob-inline-meta", "--inline-bootstrap", "inline_meta", is_flag=True,
              help="Inline the RAFS metadata and the blob metadata into the data blob.")
@click.option("-B", "--bootstrap", type=click.Path(path_type=Path), help="A separate bootstrap (not supported: use "
              "--blob-inline-meta).")
@click.option("-D", "--blob-dir", type=click.Path(path_type=Path), help="Directory for the blob, named by its id.")
@click.option("--blob-id", help="Name the blob (not with --blob-inline-meta).")
@click.option("--features", default="", help="Features: blob-toc (always on).")
@click.option("--whiteout-spec", default="oci", show_default=True, type=click.Choice(["oci", "overlayfs", "none"]))
@click.option("-v", "--fs-version", default="6", show_default=True, help="RAFS version: 6 (5 is not supported).")
@click.option("--compressor", default="zstd", show_default=True, type=click.Choice(["none", "lz4_block", "zstd"]))
@click.option("--digester", default="blake3", show_default=True, type=click.Choice(["blake3", "sha256"]))
@click.option("--chunk-size", default="0x100000", show_default=True, help="Chunk size, a power of two.")
@click.option("--chunk-dict", help="bootstrap=PATH: reference the chunks this bootstrap (or layer blob) has.")
@click.option("--aligned-chunk", is_flag=True, help="Align chunks to 4 KiB (RAFS v6 always does).")
@click.option("--repeatable", is_flag=True, help="Reproducible output (always).")
@click.option("--prefetch-policy", default="none", show_default=True, type=click.Choice(["fs", "blob", "none"]),
              help="fs: prefetch the paths given on stdin.")
@click.option("-J", "--output-json", type=click.Path(path_type=Path), help="Write the result as JSON here.")
@_log_level
def create(source: Path, source_type: str, blob: Path | None, inline_meta: bool, bootstrap: Path | None,
           blob_dir: Path | None, blob_id: str | None, features: str, whiteout_spec: str, fs_version: str,
           compressor: str, digester: str, chunk_size: str, chunk_dict: str | None, aligned_chunk: bool,
           repeatable: bool, prefetch_policy: str, output_json: Path | None, log_level: str) -> None:
    """Build one layer: a directory or a layer tar becomes a RAFS v6 data blob with its bootstrap inline."""
    del aligned_chunk, repeatable, log_level, features  # the behaviour they ask for is the only one we have
    if fs_version != "6":
        raise UsageError(f"--fs-version {fs_version}: only RAFS v6 is supported")
    if inline_meta and (bootstrap is not None or blob_id is not None):
        raise click.UsageError("--blob-inline-meta conflicts with --bootstrap and --blob-id")
    if not inline_meta:
        raise UsageError("only --blob-inline-meta (--inline-bootstrap) blobs are supported: the bootstrap travels "
                         "inside the blob")
    if blob is None and blob_dir is None:
        raise click.UsageError("give --blob or --blob-dir")
    from nydus_py.build.chunkdict import dictionary_path, read_chunk_dict_file
    from nydus_py.build.pipeline import build_blob_file
    from nydus_py.sources.gzipref import ZranLayer
    from nydus_py.sources.layer import LayerKind, Source, open_gzip_ref, open_layer

    refuse_clashes({"--output-json": output_json, "--blob": blob}, {"SOURCE": source})
    dictionary = read_chunk_dict_file(Path(dictionary_path(chunk_dict))) if chunk_dict else None
    config = BuildConfig(compressor=Compressor(compressor), digester=Digester(digester),
                         chunk_size=check_chunk_size(parse_size(chunk_size)), whiteout_spec=WhiteoutSpec(whiteout_spec),
                         chunk_dict=dictionary)
    patterns = _prefetch_patterns(prefetch_policy)
    with reserved_output(output_json) as write_json:
        if source_type == "targz-ref":  # nydus-image forces gzip chunks and sha256 digests for it
            if dictionary is not None:
                raise UsageError("--chunk-dict: a targz-ref layer is indexed in place, never deduplicated")
            config = replace(config, digester=Digester.SHA256)
            source_layer: Source | ZranLayer = open_gzip_ref(str(source))
        else:
            kind = LayerKind.TAR if source_type == "tar-rafs" else LayerKind.DIRECTORY
            source_layer = open_layer(str(source), whiteout_spec=config.whiteout_spec,
                                      overlay_ns=config.overlay_xattr_ns, kind=kind)
        if blob_dir is not None and source_layer.holds(blob_dir):
            raise UsageError(f"{blob_dir}: --blob-dir is inside the source directory, which would hold its own blob")
        info = build_blob_file(source_layer, config, blob=blob, blob_dir=blob_dir, prefetch=patterns)
        write_json(_json({"version": _version(), "bootstrap": "", "blobs": [info.blob_id], "fs_version": "6",
                          "compressor": info.compressor.name.lower()}))


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()


@cli.command(context_settings=_HELP)
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-B", "--bootstrap", "target", required=True, type=click.Path(path_type=Path),
              help="Where the merged bootstrap is written.")
@click.option("-J", "--output-json", type=click.Path(path_type=Path), help="Write the result as JSON here.")
@click.option("--prefetch-policy", default="none", show_default=True, type=click.Choice(["fs", "blob", "none"]),
              help="fs: prefetch the paths given on stdin.")
@click.option("--blob-digests", help="Comma-separated blob ids, one per source.")
@click.option("--blob-sizes", help="Comma-separated blob file sizes, one per source.")
@click.option("--blob-toc-digests", help="Comma-separated TOC digests, one per source.")
@click.option("--blob-toc-sizes", help="Comma-separated TOC sizes, one per source.")
@click.option("--chunk-dict", help="bootstrap=PATH: the chunk dictionary the layers were built with.")
@click.option("--parent-bootstrap", type=click.Path(path_type=Path), help="Not supported yet.")
@click.option("-D", "--blob-dir", type=click.Path(path_type=Path), help="Accepted for compatibility; unused.")
@_log_level
def merge(sources: tuple[Path, ...], target: Path, output_json: Path | None, prefetch_policy: str,
          blob_digests: str | None, blob_sizes: str | None, blob_toc_digests: str | None,
          blob_toc_sizes: str | None, chunk_dict: str | None, parent_bootstrap: Path | None,
          blob_dir: Path | None, log_level: str) -> None:
    """Merge per-layer bootstraps (lowest first) into one bootstrap, applying each layer's whiteouts."""
    from nydus_py.build.merge import BlobFacts, merge_bootstraps

    del blob_dir, log_level
    if parent_bootstrap:
        raise UsageError("--parent-bootstrap is not supported yet")
    dictionary: frozenset[str] = frozenset()
    if chunk_dict:
        from nydus_py.build.chunkdict import dictionary_path, read_chunk_dict_file

        dictionary = frozenset(b.info.blob_id for b in read_chunk_dict_file(Path(dictionary_path(chunk_dict))).blobs)
    count = len(sources)
    ids = _column("--blob-digests", blob_digests, count, _digest_hex)
    sizes = _column("--blob-sizes", blob_sizes, count, _byte_count)
    toc_digests = _column("--blob-toc-digests", blob_toc_digests, count, _digest_hex)
    toc_sizes = _column("--blob-toc-sizes", blob_toc_sizes, count, _byte_count)
    facts = [BlobFacts(blob_id=i, size=s, toc_digest=bytes.fromhex(d) if d else None, toc_size=ts)
             for i, s, d, ts in zip(ids, sizes, toc_digests, toc_sizes, strict=True)]
    refuse_clashes({"--bootstrap": target, "--output-json": output_json},
                   {f"source {i}": source for i, source in enumerate(sources)})
    with reserved_output(output_json) as write_json:
        merged = merge_bootstraps(list(sources), facts, _prefetch_patterns(prefetch_policy), dictionary)
        with output_file(target) as f:
            f.write(merged.bootstrap)
        write_json(_json({"version": _version(), "bootstrap": str(target),
                          "blobs": [info.blob_id for info in merged.device_table], "fs_version": "6",
                          "compressor": merged.compressor.name.lower()}))


_T = TypeVar("_T")


def _column(flag: str, text: str | None, count: int, parse: Callable[[str, str], _T]) -> list[_T | None]:
    """One value per source from a comma-separated flag (or None for each when the flag is not given)."""
    if not text:
        return [None] * count
    values = text.split(",")
    if len(values) != count:
        raise UsageError(f"{flag}: {len(values)} values for {count} sources")
    return [parse(flag, value) for value in values]


def _digest_hex(flag: str, value: str) -> str:
    """A sha256 digest (`sha256:` optional) as 64 lowercase hex digits."""
    hex_part = value.removeprefix("sha256:")
    if not is_blob_digest(hex_part):
        raise UsageError(f"{flag}: {value[:80]!r} is not a sha256 digest (64 lowercase hex digits)")
    return hex_part


def _byte_count(flag: str, value: str) -> int:
    """A blob or TOC size in bytes: decimal digits, at most RAFS's 2^40."""
    if not (value.isascii() and value.isdigit()) or len(value) > 20 or int(value) > rafs.MAX_BLOB_COMPRESSED_SIZE:
        raise UsageError(f"{flag}: {value[:80]!r} is not a size in bytes (a decimal number up to 2^40)")
    return int(value)


@cli.command(context_settings=_HELP)
@click.argument("bootstrap_arg", required=False, type=click.Path(path_type=Path))
@click.option("-B", "--bootstrap", type=click.Path(path_type=Path), help="The bootstrap.")
@click.option("-b", "--blob", type=click.Path(path_type=Path), help="The data blob (or its chunk data alone).")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="Where the tar is written (may be a FIFO: written sequentially, in place).")
@click.option("--backend-type", help="Not supported: give --blob.")
@click.option("--backend-config", help="Not supported: give --blob.")
@click.option("-D", "--blob-dir", type=click.Path(path_type=Path), help="Where blobs are, named by id.")
@_log_level
def unpack(bootstrap_arg: Path | None, bootstrap: Path | None, blob: Path | None, output: Path,
           backend_type: str | None, backend_config: str | None, blob_dir: Path | None, log_level: str) -> None:
    """Write the filesystem of a bootstrap and its blob as a tar."""
    from nydus_py.read.locate import open_image
    from nydus_py.read.unpack import write_tar_file

    del log_level
    if backend_type or backend_config:
        raise UsageError("--backend-type/--backend-config: storage backends are not supported; give --blob")
    path = bootstrap or bootstrap_arg
    if path is None:
        raise click.UsageError("give the bootstrap (--bootstrap)")
    refuse_clashes({"--output": output}, {"--bootstrap": path, "--blob": blob})
    write_tar_file(open_image(path, blob_dir, own_blob=blob), output)


@cli.command(context_settings=_HELP)
@click.argument("bootstrap_arg", required=False, type=click.Path(path_type=Path))
@click.option("-B", "--bootstrap", type=click.Path(path_type=Path), help="The bootstrap.")
@click.option("-J", "--output-json", type=click.Path(path_type=Path), help="Write the result as JSON here.")
@click.option("-D", "--blob-dir", type=click.Path(path_type=Path), help="Accepted for compatibility; unused.")
@click.option("-v", "--verbose", is_flag=True, help="Accepted for compatibility.")
@_log_level
def check(bootstrap_arg: Path | None, bootstrap: Path | None, output_json: Path | None, blob_dir: Path | None,
          verbose: bool, log_level: str) -> None:
    """Validate a bootstrap's metadata (what nydusd validates)."""
    from nydus_py.read.check import check_bootstrap_file

    del blob_dir, verbose, log_level
    path = bootstrap or bootstrap_arg
    if path is None:
        raise click.UsageError("give the bootstrap (--bootstrap)")
    refuse_clashes({"--output-json": output_json}, {"--bootstrap": path})
    with reserved_output(output_json) as write_json:
        report = check_bootstrap_file(path)
        if report.defects:
            raise NydusError(f"{path}: {report.defects[0]} ({len(report.defects)} defects)")
        click.echo(f"RAFS filesystem metadata is valid, referenced data blobs: {len(report.blob_ids)}")
        write_json(_json({"version": _version(), "bootstrap": str(path), "blobs": report.blob_ids}))


def main(argv: list[str] | None = None) -> int:
    """Console entry point, with nydus-image's exit statuses: 1 on errors, 2 on usage errors."""
    args = sys.argv[1:] if argv is None else argv
    try:
        # images are millions of objects without cycles (nydus_py/util/gcpause.py)
        with sigterm_interrupts(), cyclic_gc_paused():
            invoke(cli, args, "nydus-py-image")
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return EXIT_ERROR
    except NydusError as exc:
        click.echo(f"Error: {exc}", err=True)
        return EXIT_ERROR
    except OSError as exc:
        if exc.errno == errno.EPIPE and exc.filename is None:  # stdout's reader went away
            silence_stdout()
            click.echo("Error: standard output: the reader went away (broken pipe)", err=True)
            return EXIT_ERROR
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename else ""
        click.echo(f"Error: {where}{exc.strerror or exc}", err=True)
        return EXIT_ERROR
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("Error: interrupted", err=True)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - one line for the converter's log, never a traceback
        click.echo(f"Error: internal error (a bug in nydus-py): {type(exc).__name__}: {exc}", err=True)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
