"""Settings: one model, filled from explicit arguments, then the environment, then defaults.

Environment variables (all optional):

``TOMOLIVE_DATA_DIR``   where the catalog, Zarr arrays and key file live (``./tomolive-data``)
``TOMOLIVE_HOST``       server bind address (``127.0.0.1``)
``TOMOLIVE_PORT``       server port (``8000``)
``TOMOLIVE_TILED_URI``  Tiled URI clients use (``http://HOST:PORT``)
``TOMOLIVE_API_KEY``    API key; otherwise the key file ``DATA_DIR/api_key`` made by ``tomolive serve``
``TOMOLIVE_PUBLIC``     ``1`` lets anyone read without a key (writes still need it)
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import MissingDataError

KEY_FILE_NAME = "api_key"


@dataclass(frozen=True)
class Settings:
    """Where tomolive keeps data and how it reaches Tiled."""

    data_dir: Path = field(default_factory=lambda: Path("tomolive-data"))
    host: str = "127.0.0.1"
    port: int = 8000
    tiled_uri: str | None = None
    api_key: str | None = None
    public: bool = False

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``TOMOLIVE_*`` variables; keyword arguments that are not None win."""
        env = os.environ
        values: dict[str, object] = {}
        if "TOMOLIVE_DATA_DIR" in env:
            values["data_dir"] = Path(env["TOMOLIVE_DATA_DIR"])
        if "TOMOLIVE_HOST" in env:
            values["host"] = env["TOMOLIVE_HOST"]
        if "TOMOLIVE_PORT" in env:
            values["port"] = int(env["TOMOLIVE_PORT"])
        if "TOMOLIVE_TILED_URI" in env:
            values["tiled_uri"] = env["TOMOLIVE_TILED_URI"]
        if "TOMOLIVE_API_KEY" in env:
            values["api_key"] = env["TOMOLIVE_API_KEY"]
        if "TOMOLIVE_PUBLIC" in env:
            values["public"] = env["TOMOLIVE_PUBLIC"].lower() in {"1", "true", "yes"}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    @property
    def uri(self) -> str:
        """The Tiled server URI clients connect to."""
        return self.tiled_uri or f"http://{self.host}:{self.port}"

    @property
    def key_file(self) -> Path:
        return self.data_dir.absolute() / KEY_FILE_NAME

    def resolved_api_key(self) -> str:
        """The API key: explicit/env value, else the key file written by ``tomolive serve``."""
        if self.api_key:
            return self.api_key
        if self.key_file.exists():
            return self.key_file.read_text().strip()
        raise MissingDataError(
            f"no API key: set TOMOLIVE_API_KEY or start the server once with `tomolive serve` "
            f"(it writes {self.key_file})."
        )

    def with_api_key(self) -> tuple[Settings, str]:
        """Settings carrying a key, creating the user-only key file on first use.

        Returns the settings and a sentence saying where the key came from.
        """
        if self.api_key:
            return self, "from TOMOLIVE_API_KEY (or --api-key)"
        path = self.key_file
        if path.exists():
            return replace(self, api_key=path.read_text().strip()), f"from {path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return replace(self, api_key=key), f"generated and stored in {path} (mode 600)"
