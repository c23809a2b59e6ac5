"""One scan's result in Tiled: the ``processed/<raw uid>`` container, its volumes, preview and status."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from tiled.client.base import BaseClient
from tiled.structures.array import ArrayStructure, BuiltinDtype
from tiled.structures.core import StructureFamily
from tiled.structures.data_source import DataSource

from ..errors import BadInputError, ResultExistsError
from .client import processed_root, raw_path
from .internals import set_compressors, writable_zarr_path
from .metadata import jsonable, now
from .protocol import Status, check_status
from .queries import newest_version
from .volume import VOLUME_COMPRESSORS, VolumeTarget

if TYPE_CHECKING:
    import pandas as pd


class TiledResult:
    """The ``processed/<raw uid>`` container of one scan: a :class:`~tomolive.store.ResultStore`.

    ``node`` is the container's Tiled client; ``models_client`` the server root, where
    trained models go.
    """

    def __init__(
        self,
        node: BaseClient,
        api_key: str | None,
        models_client: BaseClient | None = None,
        previous_parameters: dict[str, Any] | None = None,
    ):
        self.node = node
        self.api_key = api_key
        self.uid: str = node.item["id"]
        self.uri: str | None = node.uri
        self.models_client = models_client
        self.previous_parameters = previous_parameters
        self._preview: BaseClient | None = None
        self._patching = threading.Lock()  # Tiled patches metadata read-modify-write: one patch at a time

    @classmethod
    def create(
        cls, client: BaseClient, raw_uid: str, metadata: dict, api_key: str | None = None, *, new_version: bool = False
    ) -> TiledResult:
        """A new container with status ``running``: ``processed/<raw uid>``, or, when results of
        that run exist and ``new_version`` is True, ``processed/<raw uid>-v<n>`` beside them.

        An existing result is never deleted or changed. Without ``new_version`` (a live run,
        whose uid must be new) an existing one raises :class:`~tomolive.errors.ResultExistsError`.
        """
        root = processed_root(client)
        key, version, previous = raw_uid, 1, None
        if raw_uid in root:
            if not new_version:
                raise ResultExistsError(
                    f"processed/{raw_uid} already exists: a run's uid is never reused, so this start document "
                    "is refused and the existing result left as it is (reprocess with `tomolive process`, "
                    "which adds a new version)."
                )
            key_before, previous = newest_version(client, raw_uid)
            version = int(previous.metadata.get("version", 1)) + 1
            key = f"{raw_uid}-v{version}"
        md = {
            **jsonable(metadata),
            "raw_uid": raw_uid,
            "links": {"raw": raw_path(raw_uid)},
            "status": "running",
            "created": now(),
            "version": version,
            "previous_version": None if previous is None else key_before,
        }
        node = root.create_container(key, metadata=md)
        before = None if previous is None else dict(previous.metadata.get("provenance", {}).get("parameters", {}))
        return cls(node, api_key, client, before)

    def describe(self) -> str:
        """The container's URI, for a log line."""
        return str(self.uri)

    def update(self, **metadata: Any) -> None:
        """Merge top-level metadata keys (no revision kept: progress updates are frequent)."""
        _patch_metadata(self.node, jsonable(metadata), self._patching)

    def set_status(self, status: Status, **metadata: Any) -> None:
        """Set ``status`` (one of :data:`~tomolive.store.STATUSES`), stamp ``updated``, merge ``metadata``."""
        self.update(status=check_status(status), updated=now(), **metadata)

    def new_volume(
        self,
        key: str,
        shape: tuple[int, ...],
        rows_per_block: int,
        dtype: np.dtype = np.dtype(np.float32),
        metadata: dict | None = None,
    ) -> VolumeTarget:
        """Create an empty array node chunked along its first axis (a volume's z; any number of
        axes); workers fill it with :meth:`VolumeTarget.write_block`."""
        if key == "recon":  # ``tomolive ls`` shows it from the listing, without a request per scan
            self.update(recon_shape=[int(n) for n in shape])
        n_rows = shape[0]
        row_chunks = [rows_per_block] * (n_rows // rows_per_block)
        if n_rows % rows_per_block:
            row_chunks.append(n_rows % rows_per_block)
        structure = ArrayStructure(
            data_type=BuiltinDtype.from_numpy_dtype(np.dtype(dtype)),
            shape=tuple(shape),
            chunks=(tuple(row_chunks), *((n,) for n in shape[1:])),
            dims=("z", "y", "x") if len(shape) == 3 else None,
        )
        array_client = self.node.new(
            StructureFamily.array,
            [DataSource(structure=structure, structure_family=StructureFamily.array)],
            key=key,
            metadata=jsonable(metadata or {}),
        )
        zarr_path = writable_zarr_path(array_client)
        if zarr_path is not None and (Path(zarr_path) / "zarr.json").is_file():
            set_compressors(zarr_path, VOLUME_COMPRESSORS)
        return VolumeTarget(array_client.uri, self.api_key, rows_per_block, zarr_path)

    def write_table(self, key: str, table: pd.DataFrame, metadata: dict | None = None) -> None:
        """Write ``table`` whole as the table node ``key`` (stored in the server's tabular storage)."""
        if not key:
            raise BadInputError(f"write_table needs a child's key; got {key!r}")
        self.node.write_table(table, key=key, metadata=jsonable(metadata or {}))

    def remove(self, key: str) -> None:
        """Delete the child ``key`` and its data."""
        if not key:  # Tiled reads no key as every child
            raise BadInputError(f"remove needs a child's key; got {key!r}")
        self.node.delete_contents(key, external_only=False)

    def __contains__(self, key: str) -> bool:
        return key in self.node

    def write_preview(self, image: np.ndarray | None, metadata: dict) -> None:
        """Create or overwrite the ``preview`` array (one chunk), then its metadata; with
        ``image`` None (unchanged since the last call), the metadata only.

        Data first, metadata second: the metadata never claims more angles than the data holds.
        """
        if image is not None:
            image = np.ascontiguousarray(image, dtype=np.float32)
            if self._preview is None:
                structure = ArrayStructure(
                    data_type=BuiltinDtype.from_numpy_dtype(image.dtype),
                    shape=image.shape,
                    chunks=tuple((n,) for n in image.shape),
                    dims=("slice", "y", "x"),
                )
                self._preview = self.node.new(
                    StructureFamily.array,
                    [DataSource(structure=structure, structure_family=StructureFamily.array)],
                    key="preview",
                    metadata=jsonable(metadata),
                )
            self._preview.write_block(image, block=(0,) * image.ndim)
        elif self._preview is None:
            raise BadInputError("write_preview: no preview image yet, so one must be given.")
        _patch_metadata(self._preview, jsonable(metadata), self._patching)


def _patch_metadata(node: BaseClient, metadata: dict, lock: threading.Lock) -> None:
    """Merge ``metadata`` into ``node``'s, one patch at a time.

    The client builds a JSON patch against its own copy of the metadata; concurrent patches let the
    server lose keys, and the next patch replacing one of them failed with a 500. After a 5xx the copy
    is refreshed, so a retry (:func:`~tomolive.store.client.patiently`) builds its patch anew.
    """
    with lock:
        try:
            node.update_metadata(metadata=metadata, drop_revision=True)
        except httpx.HTTPStatusError as err:
            if err.response.status_code >= 500:
                with contextlib.suppress(httpx.HTTPError):
                    node.refresh()
            raise
