"""tomolive: live tomographic reconstruction for Bluesky scans, with results in Tiled."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tomolive")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
