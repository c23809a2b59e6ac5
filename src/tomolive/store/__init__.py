"""Every byte in and out of Tiled and the local outbox, behind one protocol.

:class:`ResultStore` is one scan's result container; :class:`TiledResult`
(``processed/<raw uid>`` in Tiled) and :class:`OutboxResult` (a local directory, uploaded
later) implement it. Dask workers write volumes with :class:`VolumeTarget`. Tiled's and
Zarr's internals that tomolive relies on sit in :mod:`tomolive.store.internals` alone.
"""

from .client import PROCESSED, RAW, connect, fetched_here, is_unreachable, patiently, processed_root, raw_path, raw_root
from .metadata import jsonable, now, to_json
from .outbox import OutboxResult, default_outbox, pending, upload
from .protocol import STATUSES, ResultStore, Status, check_status
from .queries import find_scan, newest_version, processed_for, raw_for, scan_rows, versions
from .tiled_result import TiledResult
from .volume import VOLUME_COMPRESSORS, VolumeTarget

__all__ = [
    "PROCESSED",
    "RAW",
    "STATUSES",
    "VOLUME_COMPRESSORS",
    "OutboxResult",
    "ResultStore",
    "Status",
    "TiledResult",
    "VolumeTarget",
    "check_status",
    "connect",
    "default_outbox",
    "fetched_here",
    "find_scan",
    "is_unreachable",
    "jsonable",
    "newest_version",
    "now",
    "patiently",
    "pending",
    "processed_for",
    "processed_root",
    "raw_for",
    "raw_path",
    "raw_root",
    "scan_rows",
    "to_json",
    "upload",
    "versions",
]
