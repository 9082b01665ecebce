"""`nydus-py serve` and `nydus-py worker`: the conversion service's command lines (options -> ServiceConfig ->
one call). Every option is also a key of the `--config` file (TOML); the command line wins."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

_Command = TypeVar("_Command", bound=Callable[..., Any])


def _common(fn: _Command) -> _Command:
    """What serve and worker share: where the queue is and how this process reaches registries."""
    for option in reversed([
        click.option("--config", "config_file", type=click.Path(path_type=Path),
                     help="TOML file of these options (keys as the long options, with _ for -; conversion options "
                          "under [conversion])."),
        click.option("--broker", help="redis://HOST:PORT/DB: the queue and the store, shared by every machine "
                                      "(default: the embedded queue in --state-dir, one machine)."),
        click.option("--state-dir", help="Where the embedded queue and store live (default "
                                         "~/.local/state/nydus-py)."),
        click.option("--lease-seconds", type=float,
                     help="How long a conversion's lease lasts unless renewed; a dead worker's work is taken over "
                          "after at most this long (default 120)."),
        click.option("--plain-http", is_flag=True, default=None, help="Talk HTTP, not HTTPS, to the registries."),
        click.option("--insecure", is_flag=True, default=None, help="Do not verify the registries' TLS certificates."),
        click.option("--creds-file", help="Docker config.json whose `auths` give credentials per registry (default "
                                          "~/.docker/config.json)."),
    ]):
        fn = option(fn)
    return fn


def _setup_logging() -> None:
    import gc

    gc.enable()  # a long-running process: the collector on (the CLI pauses it for one-shot commands)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.command()
@_common
@click.option("--listen", help="HOST:PORT to serve on (default 127.0.0.1:8080).")
@click.option("--webhook-auth", help="The exact Authorization header value every POST must carry (else 401).")
@click.option("--allow-registry", "allow_registries", multiple=True, metavar="HOST[:PORT]",
              help="A registry the service may fetch from and push to (repeatable); events naming any other queue "
                   "nothing.")
@click.option("--tag-suffix", help="repo:TAG converts to repo:TAG<suffix> (default -nydus).")
@click.option("--max-queue", type=int, help="Conversions queued or running at most (default 1000); past it, 429.")
@click.option("--workers", "local_workers", type=int, default=1, show_default=True,
              help="Embedded mode: local worker processes to start and supervise (0: none).")
@click.option("--concurrency", type=int, help="Pool processes per local worker (default: one per core).")
@click.option("--compressor", type=click.Choice(["zstd", "lz4_block", "none"]), help="Chunk compressor (zstd).")
@click.option("--digester", type=click.Choice(["blake3", "sha256"]), help="Chunk digest (blake3).")
@click.option("--chunk-size", type=int, help="Chunk size in bytes, a power of two (1 MiB).")
@click.option("--oci-ref", is_flag=True, default=None, help="zran: reference gzip layers in place.")
@click.option("--chunk-dict", help="A chunk dictionary image (docker://REF) every conversion uses.")
@click.option("--prefetch-patterns", "prefetch_file", type=click.Path(path_type=Path),
              help="File of absolute paths every converted image prefetches (default: /).")
@click.option("--verify", is_flag=True, default=None,
              help="Compare every converted image with its source (as check --source) before it counts as done.")
def serve(config_file: Path | None, local_workers: int, prefetch_file: Path | None, **options: Any) -> None:
    """Serve the conversion API: registry notifications, Harbor webhooks and direct requests become
    conversions, run by workers (local ones here without --broker; `nydus-py worker` on any machine with it).

    POST /api/v1/conversions, GET /api/v1/conversions[/ID], /healthz, /metrics, /openapi.json, and a status
    page at /. docs/service.md has the API and the setup of registries and Harbor.
    """
    from nydus_py.service.options import load_config, read_prefetch_file
    from nydus_py.service.serve import run_serve

    if prefetch_file is not None:
        options["prefetch"] = read_prefetch_file(prefetch_file)
    config = load_config(config_file, **options)
    _setup_logging()
    run_serve(config, local_workers)


@click.command()
@_common
@click.option("--concurrency", type=int, help="Pool processes (default: one per core).")
def worker(config_file: Path | None, **options: Any) -> None:
    """Run conversions from the service's queue (Celery worker, one pool process per core by default).

    Start any number, on any machine that reaches the broker and the registries. Conversion options travel
    with each task; registry access and credentials are this worker's own.
    """
    from nydus_py.service.options import load_config
    from nydus_py.service.tasks import run_worker

    config = load_config(config_file, **options)
    _setup_logging()
    run_worker(config)


__all__ = ["serve", "worker"]
