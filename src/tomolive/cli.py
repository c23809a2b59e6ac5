"""Command line: ``tomolive serve | key | demo | ls | export | process | worker | upload-outbox``.

Every expected failure prints one line to stderr naming the input and the fix, and exits
non-zero; ``tomolive --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .cli_types import iso_date, positive_int, positive_mb
from .config import Settings, split_password

if TYPE_CHECKING:
    from tiled.client.base import BaseClient

DESCRIPTION = (
    "tomolive: reconstruct tomography scans live into a Tiled server. "
    "Run 'tomolive COMMAND --help' for a command's options."
)
SERVER_URI_FILE = "server_uri"
"""Written by ``tomolive serve`` into its data directory: the URI clients given ``--data-dir`` use."""


class CliError(Exception):
    """An expected failure: its one-line message names the input and the fix."""


def _settings(args: argparse.Namespace) -> Settings:
    uri = getattr(args, "uri", None)
    data_dir = getattr(args, "data_dir", None)
    if (
        uri is None
        and data_dir is not None
        and args.func not in (cmd_serve, cmd_demo)
        and "TOMOLIVE_TILED_URI" not in os.environ
    ):
        described = Path(data_dir) / SERVER_URI_FILE  # the server this data dir belongs to
        if described.is_file():
            uri = described.read_text().strip() or None
    return Settings.from_env(
        data_dir=data_dir,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        tiled_uri=uri,
        api_key=getattr(args, "api_key", None),
        public=getattr(args, "public", None) or None,
        catalog_uri=getattr(args, "catalog", None),
        auth_uri=getattr(args, "auth_db", None),
        admin_key=getattr(args, "admin_key", None),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the Tiled server in the foreground until interrupted; issue its admin and writer keys first."""
    from .server import running_server
    from .server.modes import FILE_MODE, mode_of
    from .server.web import web_url

    settings = _settings(args)
    _check_port_free(settings, "--port")
    catalog = f"PostgreSQL {split_password(settings.catalog_uri)[0]}" if settings.catalog_uri else "SQLite"
    with running_server(settings, console=True) as server:
        data_dir = server.data_dir.absolute()
        uri_file = data_dir / SERVER_URI_FILE
        uri_file.write_text(server.uri + "\n")
        uri_file.chmod(FILE_MODE)  # private like everything else in the data dir
        key = "TOMOLIVE_API_KEY" if settings.api_key else f"{server.key_file} (mode {mode_of(server.key_file):o})"
        reads = "anyone may read (--public)" if server.public else "reads need a key too"
        print(
            f"tomolive: Tiled server at {server.uri}\n"
            f"  catalog: {catalog}; data in {data_dir} (mode {mode_of(data_dir):o})\n"
            f"  writer API key: {key}; writes need it (it cannot delete), {reads}.\n"
            f"  admin key (issues and revokes keys; keep it to yourself): {server.admin_key_file} "
            f"(mode {mode_of(server.admin_key_file):o})\n"
            f"  read-only keys for users: tomolive key --uri {server.uri} --data-dir {data_dir}\n"
            f"  web view: {web_url(server.uri)}  (add ?api_key=KEY once, or type a key there; docs/web.md)\n"
            f"  connect: from tiled.client import from_uri; c = from_uri({server.uri!r}, api_key=...)",
            flush=True,
        )
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the child on SIGTERM too
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("tomolive: stopping the Tiled server", flush=True)
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    """Print a new API key (read-only unless ``--writer``), or revoke one, with the admin key."""
    from .errors import TomoliveError
    from .server.keys import create_key, key_headers, revoke_key

    if args.expires_in is not None and args.expires_in <= 0:
        print(
            f"tomolive key: --expires-in {args.expires_in}: give a positive number of seconds "
            "(omit it for a key that never expires)",
            file=sys.stderr,
        )
        return 2
    settings = _settings(args)
    try:
        admin_key = settings.resolved_admin_key()
        if args.revoke:
            revoke_key(settings.uri, key_headers(admin_key), args.revoke)
            print(f"revoked the key starting {args.revoke[:8]}")
            return 0
        print(
            create_key(settings.uri, admin_key, read_only=not args.writer, note=args.note, expires_in=args.expires_in)
        )
    except TomoliveError as err:
        print(f"tomolive key: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """Print one line per processed scan, newest first, filtered on the server."""
    from .store import scan_rows

    settings = _settings(args)
    client = _connect(settings)
    rows = scan_rows(client, sample=args.sample, status=args.status, since=args.since, limit=args.limit)
    if not rows:
        filters = [
            f"{name}={value}" for name, value in vars(args).items() if name in ("sample", "status", "since") and value
        ]
        print(f"no processed scans in {settings.uri}/processed" + (f" with {', '.join(filters)}" if filters else ""))
        return 0
    header = f"{'uid':36}  {'sample':16} {'scan_id':>7}  {'status':9} {'shape':16} when"
    print(header)
    for row in rows:
        shape = "x".join(map(str, row["shape"])) if row["shape"] else "-"
        sample = "-" if row["sample"] is None else str(row["sample"])[:16]
        scan_id = "-" if row["scan_id"] is None else str(row["scan_id"])
        status = str(row["status"] or "-")
        print(f"{row['uid']:36}  {sample:16} {scan_id:>7}  {status:9} {shape:16} {row['when'] or '-'}")
        if status in ("failed", "aborted") and row["reason"]:
            print(f"{'':38}reason: {row['reason']}")
    if len(rows) == args.limit:
        print(f"(the newest {args.limit}; --limit N for more)", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a processed scan's arrays to TIFF slices, DXchange HDF5 or Zarr."""
    from .errors import TomoliveError
    from .io.export import export_scan
    from .store import find_scan

    settings = _settings(args)
    if args.out is not None and not Path(args.out).absolute().parent.is_dir():
        raise CliError(
            f"--out {args.out}: the folder {Path(args.out).absolute().parent} does not exist; create it or choose another"
        )
    try:
        node = find_scan(_connect(settings), args.uid)
        done = export_scan(
            node, args.format, args.out, args.array or ["recon"], force=args.force, progress=sys.stderr.isatty()
        )
    except TomoliveError as err:
        print(f"tomolive export {args.uid}: {err}", file=sys.stderr)
        return 1
    mb = done.nbytes / 1e6
    print(
        f"exported {node.item['id']} to {done.path} ({mb:.1f} MB in {done.seconds:.1f} s, "
        f"{mb / max(done.seconds, 1e-9):.0f} MB/s)"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .sim.demo import run_demo

    settings = _settings(args)
    _check_port_free(settings, "--port")
    output = Path(args.output)
    if output.suffix.lower() == ".png" and not output.absolute().parent.is_dir():
        raise CliError(f"--output {args.output}: the folder {output.absolute().parent} does not exist; create it first")
    run_demo(settings, size=args.size, n_angles=args.angles, output=output)
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    """Reconstruct a stored scan (file or raw Tiled run) into the Tiled server, no RunEngine."""
    from .engine import Engine
    from .io.offline import is_tiled_uri, open_source, process_scan
    from .store import connect
    from .techniques.tomo import PipelineParams, TomoTechnique

    settings = _settings(args)
    key = _require_key(settings)
    overrides = {
        "center": args.center,
        "method": args.method,
        "stripe_method": args.stripes,
        "rows_per_block": args.rows_per_block,
    }
    params = PipelineParams(**{k: v for k, v in overrides.items() if v is not None})
    source_key = args.source_api_key or key
    if is_tiled_uri(args.source):
        source_key = _require_key(Settings(tiled_uri=args.source, api_key=source_key), "--source-api-key")
    scan, uid = open_source(args.source, source_key)
    bars = sys.stderr.isatty()  # progress bars for a terminal; a log file gets the final line only
    with scan, Engine(connect(settings.uri, api_key=key), dask=args.dask, progress=bars) as engine:
        result = process_scan(scan, uid, engine, TomoTechnique(params), sample=args.sample, progress=bars)
    print(f"{result.status}: {result.uri or result.outbox}" + (f" ({result.reason})" if result.reason else ""))
    return 0 if result.status == "complete" else 1


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the pipeline on signed documents from a bluesky 0MQ proxy until stopped."""
    import logging

    from .callbacks import TomoPipeline
    from .wire import SECRET_ENV, Verifier, WireSecretError, load_secret
    from .worker import run_worker

    configured = bool(args.secret_file or os.environ.get(SECRET_ENV))
    secrets: list[bytes] = []
    if configured or not args.insecure_unsigned:
        try:
            secrets = [load_secret(path) for path in args.secret_file or ()] or [load_secret()]
        except WireSecretError as err:
            opt_out = "" if configured else " (or --insecure-unsigned: anyone's documents)"
            print(f"tomolive worker: {err}{opt_out}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _quiet_http_logs(args.debug)
    settings = _settings(args)
    verifier = Verifier(secrets) if secrets else None
    with TomoPipeline.from_uri(settings.uri, api_key=_require_key(settings), dask=args.dask, progress=False) as pipe:
        signed = "signed documents only" if verifier else "UNSIGNED documents from anyone (--insecure-unsigned)"
        print(f"tomolive worker: {args.zmq} -> {settings.uri}; {signed}", flush=True)
        max_bytes = int(args.max_message_mb * 2**20)
        run_worker(args.zmq, pipe, verifier=verifier, prefix=args.prefix.encode(), max_message_bytes=max_bytes)
    return 0


def cmd_upload_outbox(args: argparse.Namespace) -> int:
    """Upload results and raw runs kept in the local outbox while Tiled was unreachable.

    Raw runs (``*.jsonl`` TiledWriter backups) go first, so each result's ``raw`` link
    resolves once it is uploaded.
    """
    from .callbacks.raw_backup import pending_raw, replay_raw
    from .store import OutboxResult, connect, default_outbox, pending, upload

    settings = _settings(args)
    outbox = default_outbox()
    paths = [Path(p) for p in args.paths]
    raw = [p for p in paths if p.suffix == ".jsonl"] if paths else pending_raw(outbox)
    entries = [OutboxResult(p) for p in paths if p.suffix != ".jsonl"] if paths else pending(outbox)
    if not raw and not entries:
        print(f"nothing to upload: the outbox {outbox} is empty")
        return 0
    key = _require_key(settings)
    client = connect(settings.uri, api_key=key)
    jobs = [(p, lambda p=p: replay_raw(p, client)) for p in raw]
    jobs += [(e.path, lambda e=e: upload(e, client, key)) for e in entries]
    failures = 0
    for path, job in jobs:
        try:
            print(f"uploaded {path} -> {job()}")
        except Exception as err:  # keep going: each stays on disk until it is safely in Tiled
            failures += 1
            print(f"could not upload {path}: {type(err).__name__}: {err} (kept)", file=sys.stderr)
    return 1 if failures else 0


def _key_or_none(settings: Settings) -> str | None:
    try:
        return settings.resolved_api_key()
    except LookupError:
        return os.environ.get("TILED_API_KEY") or None  # None: a --public server answers reads without a key


def _api_root(uri: str) -> str:
    """``scheme://host:port/api/v1/`` of any Tiled URI (the server root or a node below it)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}/api/v1/"


def _server_root(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}"


def _require_key(settings: Settings, option: str = "--api-key") -> str | None:
    """The API key for ``settings.uri``; None only when the server reads without one.

    Tiled would otherwise prompt for a username and password (or raise CannotPrompt) when a
    server that needs a key gets none; this asks the server first and names the fix instead.
    Raises CliError when the server cannot be reached.
    """
    import httpx

    key = _key_or_none(settings)
    if key is not None:
        return key
    try:
        about = httpx.get(_api_root(settings.uri), timeout=5.0).json()
    except (httpx.HTTPError, ValueError) as err:
        raise CliError(_unreachable(_server_root(settings.uri))) from err
    if about.get("authentication", {}).get("required", True):
        raise CliError(
            f"no API key for the Tiled server at {_server_root(settings.uri)}: pass {option} KEY, set TOMOLIVE_API_KEY, "
            f"or --data-dir of that server (no key file at {settings.key_file})"
        )
    return None


def _connect(settings: Settings) -> BaseClient:
    from .store import connect

    return connect(settings.uri, api_key=_require_key(settings))


def _unreachable(uri: str) -> str:
    return f"cannot reach the Tiled server at {uri}: start it with 'tomolive serve' or pass --uri"


def _check_port_free(settings: Settings, option: str) -> None:
    """Refuse to start a server on a port something else holds (it would answer in our stead)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is free
        try:
            probe.bind((settings.host, settings.port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise CliError(
                    f"port {settings.port} on {settings.host} is in use (another tomolive serve?): "
                    f"stop what listens there or pass {option} with a free port"
                ) from err
            raise CliError(
                f"cannot listen on {settings.host}:{settings.port} ({err.strerror}): pass --host/--port"
            ) from err


def _quiet_http_logs(debug: bool) -> None:
    """Per-request lines from httpx/httpcore at INFO drown a worker's log; keep them for --debug."""
    import logging

    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tomolive")
    except PackageNotFoundError:
        return "unknown"


URI_HELP = "Tiled server URI (default http://127.0.0.1:8000)"
RESULTS_URI_HELP = "Tiled server for the results (default http://127.0.0.1:8000)"


def _add_client_options(
    parser: argparse.ArgumentParser,
    *,
    uri_help: str = URI_HELP,
    data_dir_help: str = "a server's data directory: its key file, and its URI when --uri is not given",
    key_help: str | None = None,
) -> None:
    """``--uri``, ``--data-dir`` and ``--api-key``: how a command reaches the Tiled server."""
    parser.add_argument("--uri", help=uri_help)
    parser.add_argument("--data-dir", help=data_dir_help)
    parser.add_argument("--api-key", help=key_help or "API key (default: TOMOLIVE_API_KEY or DATA_DIR/api_key)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tomolive", description=DESCRIPTION)
    parser.add_argument(
        "--version", action="version", version=f"tomolive {_version()}", help="print the version and exit"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and per-request HTTP logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_server_commands(sub)
    _add_reading_commands(sub)
    _add_processing_commands(sub)
    _add_worker_commands(sub)
    return parser


def _add_server_commands(sub: argparse._SubParsersAction) -> None:
    """``serve`` and ``key``."""
    serve = sub.add_parser("serve", help="run the Tiled server (SQLite or PostgreSQL catalog, Zarr arrays)")
    serve.add_argument("--data-dir", help="arrays, key file (and SQLite catalog) directory (default ./tomolive-data)")
    serve.add_argument(
        "--catalog",
        help="postgresql://USER:PASSWORD@HOST:PORT/DB: catalog and tables in "
        "PostgreSQL (default: SQLite in the data dir; env TOMOLIVE_CATALOG_URI)",
    )
    serve.add_argument(
        "--auth-db",
        help="database for principals and API keys (default sqlite in the data dir; env TOMOLIVE_AUTH_DB_URI)",
    )
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--api-key", help="writer key this server issued earlier (default: the key file)")
    serve.add_argument("--public", action="store_true", help="allow reads without a key")
    serve.set_defaults(func=cmd_serve)

    key = sub.add_parser("key", help="issue a read-only (default) or writer API key, or revoke one, with the admin key")
    kind = key.add_mutually_exclusive_group()
    kind.add_argument("--read-only", action="store_true", help="the key can read but not write (the default)")
    kind.add_argument("--writer", action="store_true", help="the key can create and update, not delete")
    kind.add_argument("--revoke", metavar="FIRST_EIGHT", help="revoke the key starting with these characters")
    key.add_argument("--note", help="label kept with the key")
    key.add_argument("--expires-in", type=int, help="seconds until the key expires (default: never)")
    key.add_argument("--uri", help=URI_HELP)
    key.add_argument("--data-dir", help="the server's data directory, where its admin key file is")
    key.add_argument("--admin-key", help="the admin key (default: TOMOLIVE_ADMIN_KEY or DATA_DIR/admin_key)")
    key.set_defaults(func=cmd_key)


def _add_reading_commands(sub: argparse._SubParsersAction) -> None:
    """``ls`` and ``export``."""
    ls = sub.add_parser("ls", help="list processed scans")
    _add_client_options(ls)
    ls.add_argument("--sample", help="only scans of this sample")
    ls.add_argument("--status", help="only scans with this status (complete, running, failed, aborted)")
    ls.add_argument("--since", type=iso_date, help="only scans created on or after this ISO date (UTC unless given)")
    ls.add_argument("--limit", type=positive_int, default=50, help="at most this many scans, newest first (default 50)")
    ls.set_defaults(func=cmd_ls)

    export = sub.add_parser("export", help="write a processed scan to TIFF slices, DXchange HDF5 or Zarr")
    export.add_argument("uid", help="the scan's raw uid, or a unique prefix of it")
    export.add_argument(
        "--format", required=True, choices=("tiff", "hdf5", "zarr"), help="tiff slices, DXchange hdf5, or zarr"
    )
    export.add_argument("--array", action="append", help="array to export (repeatable; default recon)")
    export.add_argument("--out", help="output path (default <uid[:8]>.h5 / .zarr / -tiff)")
    export.add_argument("--force", action="store_true", help="export a scan that is not complete")
    _add_client_options(export)
    export.set_defaults(func=cmd_export)


def _add_processing_commands(sub: argparse._SubParsersAction) -> None:
    """``demo`` and ``process``."""
    demo = sub.add_parser("demo", help="simulate a scan and reconstruct it into a fresh server")
    demo.add_argument("--data-dir", help="server data directory (default ./tomolive-data)")
    demo.add_argument("--port", type=int, help="port of the demo server (default 8000)")
    demo.add_argument("--size", type=positive_int, default=256, help="detector width = slice size (default 256)")
    demo.add_argument("--angles", type=positive_int, default=360, help="number of projections (default 360)")
    demo.add_argument(
        "--output",
        default="demo-output",
        help="the PNG to write (a name ending .png), or a folder for it (default demo-output)",
    )
    demo.set_defaults(func=cmd_demo)

    process = sub.add_parser("process", help="reconstruct a stored scan (DXchange/NeXus file or Tiled run URI)")
    process.add_argument("source", help="an HDF5 file, or the URI of a raw run in Tiled (.../raw/<uid>)")
    _add_client_options(
        process,
        uri_help=RESULTS_URI_HELP,
        key_help="key of the results server (default: TOMOLIVE_API_KEY or DATA_DIR/api_key)",
    )
    process.add_argument("--source-api-key", help="key for reading a Tiled source (default: --api-key)")
    process.add_argument("--dask", help="scheduler address (default: a LocalCluster)")
    process.add_argument("--center", type=float, help="rotation-axis column in pixels (default: found)")
    process.add_argument("--method", help="reconstruction backend (default: auto)")
    process.add_argument(
        "--stripes", choices=("none", "mean", "sort", "combined"), help="stripe removal (default: mean)"
    )
    process.add_argument("--rows-per-block", type=int, help="detector rows per Dask task, even (default 16)")
    process.add_argument("--sample", help="sample name for the results (default: from the source)")
    process.set_defaults(func=cmd_process)


def _add_worker_commands(sub: argparse._SubParsersAction) -> None:
    """``worker`` and ``upload-outbox``."""
    worker = sub.add_parser("worker", help="process scans published through bluesky's 0MQ proxy")
    worker.add_argument("--zmq", required=True, help="the proxy's output, HOST:PORT (e.g. 127.0.0.1:5578)")
    worker.add_argument("--prefix", default="", help="only documents published with this prefix")
    _add_client_options(worker, uri_help=RESULTS_URI_HELP)
    worker.add_argument("--dask", help="scheduler address (default: a LocalCluster)")
    worker.add_argument(
        "--secret-file",
        action="append",
        help="file (mode 600) holding the wire secret publishers sign with; repeat to accept an old and a new "
        "one while rotating (default: $TOMOLIVE_WIRE_SECRET)",
    )
    worker.add_argument(
        "--insecure-unsigned",
        action="store_true",
        help="with no secret, accept unsigned documents from anyone who can reach the proxy",
    )
    worker.add_argument(
        "--max-message-mb",
        type=positive_mb,
        default=64.0,
        help="refuse messages over this size, unread (default 64: a 2048x2048 uint16 frame is 8)",
    )
    worker.set_defaults(func=cmd_worker)

    upload = sub.add_parser("upload-outbox", help="upload results and raw runs kept locally while Tiled was down")
    upload.add_argument(
        "paths", nargs="*", help="outbox entries or raw-run backups (raw/*.jsonl); default: everything in the outbox"
    )
    _add_client_options(upload)
    upload.set_defaults(func=cmd_upload_outbox)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; expected failures become one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    _quiet_http_logs(args.debug)
    if args.debug:
        return int(args.func(args))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"tomolive {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = _explain(err, args)
        if message is None:
            raise
        print(f"tomolive {args.command}: {message}", file=sys.stderr)
        return 1


def _explain(err: Exception, args: argparse.Namespace) -> str | None:
    """The one line an expected failure deserves, or None for a bug (its traceback is then shown)."""
    import httpx
    from tiled.client.context import CannotPrompt
    from tiled.client.utils import ClientError

    from .errors import TomoliveError

    if isinstance(err, CliError):
        return str(err)
    if isinstance(err, httpx.TransportError):
        uri = _server_root(str(err.request.url)) if _has_request(err) else _settings(args).uri
        return _unreachable(uri)
    if isinstance(err, CannotPrompt):  # Tiled wanted a password: the key it was given was refused
        settings = _settings(args)
        if _key_or_none(settings) is None:
            return "no API key: pass --api-key KEY, set TOMOLIVE_API_KEY, or --data-dir of the server"
        return (
            f"the Tiled server at {_server_root(settings.uri)} refused the API key (unknown, revoked or expired): "
            "pass a key it issued with --api-key (tomolive key makes one)"
        )
    if isinstance(err, ClientError):
        status = err.response.status_code
        url = err.response.request.url
        if status == 404:
            return f"{url.path} not found on the Tiled server at {_server_root(str(url))}: check the uid or URI (tomolive ls)"
        if status in (401, 403):
            return (
                f"the Tiled server at {_server_root(str(url))} refused the key ({status}): pass a key it issued "
                "with --api-key (tomolive key makes one)"
            )
        return f"the Tiled server at {_server_root(str(url))} answered {status}: {str(err).splitlines()[0]}"
    if isinstance(err, TomoliveError):
        lines = str(err).splitlines() or [type(err).__name__]
        return "\n".join(lines)
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}; check the path and its permissions"
    return None


def _has_request(err: Exception) -> bool:
    try:
        err.request  # type: ignore[attr-defined]  # noqa: B018  (httpx raises RuntimeError when unset)
    except RuntimeError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
