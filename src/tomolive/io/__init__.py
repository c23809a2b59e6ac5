"""Scans and results in files: DXchange and NeXus reading and writing, detector assets.

:mod:`~tomolive.io.formats` reads stored scans, :mod:`~tomolive.io.writers` writes them,
:mod:`~tomolive.io.assets` reads the frames asset documents point at,
:mod:`~tomolive.io.export` writes processed scans from Tiled to files and
:mod:`~tomolive.io.offline` processes stored scans without a RunEngine.
"""

from .assets import AssetResolver
from .formats import FrameStack, StoredScan, open_scan
from .writers import write_dxchange, write_nxtomo

__all__ = ["AssetResolver", "FrameStack", "StoredScan", "open_scan", "write_dxchange", "write_nxtomo"]
