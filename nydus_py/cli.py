"""The `nydus-py` command line: options -> one library call -> a printed summary.

Exit statuses (../shared/DESIGN.md): 0 done; 1 a verdict (check found a defect); 2 the command could not do
its job (bad options, unreadable or malformed input, I/O failure); 3 an unexpected exception (our bug).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from nydus_py import report
from nydus_py.errors import NydusError
from nydus_py.locate import open_image

EXIT_OK = 0
EXIT_VERDICT = 1
EXIT_FAILED = 2
EXIT_BUG = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Build, inspect and check Nydus (RAFS v6) container images."""
    ctx.obj = {"debug": debug}


@cli.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.argument("path", required=False, default="/")
@click.option("--blob-dir", type=click.Path(path_type=Path), help="Where the blobs of a bare bootstrap are.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def inspect(image: Path, path: str, blob_dir: Path | None, as_json: bool) -> None:
    """Describe IMAGE (a bootstrap, a blob with an inline bootstrap, or an output directory)."""
    opened = open_image(image, blob_dir)
    if as_json:
        doc = report.summary(opened.bootstrap)
        doc["listing"] = report.listing(opened.bootstrap, path.encode())
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    for line in report.summary_text(opened.bootstrap):
        click.echo(line)
    click.echo("")
    for line in report.listing(opened.bootstrap, path.encode()):
        click.echo(line)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI and map every failure to the project's exit statuses."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        status = cli.main(args=args, prog_name="nydus-py", standalone_mode=False)
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
        click.echo(f"nydus-py: {exc.filename or ''}: {exc.strerror or exc}", err=True)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if debug:
            raise
        click.echo(f"nydus-py: internal error (a bug in nydus-py): {type(exc).__name__}: {exc}", err=True)
        return EXIT_BUG
    return status if isinstance(status, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
