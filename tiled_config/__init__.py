"""Tiled server configurations shipped with tomolive (read by ``tomolive serve``)."""
