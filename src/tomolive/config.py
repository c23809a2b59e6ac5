"""Settings: one model, filled from explicit arguments, then the environment, then defaults.

Environment variables (all optional):

``TOMOLIVE_DATA_DIR``   where the catalog, Zarr arrays and key file live (``./tomolive-data``)
``TOMOLIVE_CATALOG_URI`` ``postgresql://USER:PASSWORD@HOST:PORT/DB``: catalog and tables in
                       PostgreSQL (``tiled_config/postgresql.yml``); unset: SQLite in the data dir
``TOMOLIVE_AUTH_DB_URI`` where Tiled keeps principals and API keys (``sqlite:///DATA_DIR/auth.db``)
``TOMOLIVE_HOST``       server bind address (``127.0.0.1``)
``TOMOLIVE_PORT``       server port (``8000``)
``TOMOLIVE_TILED_URI``  Tiled URI clients use (``http://HOST:PORT``)
``TOMOLIVE_API_KEY``    writer key; otherwise the key file ``DATA_DIR/api_key`` made by ``tomolive serve``
                       (keys are issued by the server: see :mod:`tomolive.server.keys`)
``TOMOLIVE_ADMIN_KEY``  admin key for ``tomolive key``; otherwise ``DATA_DIR/admin_key``
``TOMOLIVE_MAX_BODY_BYTES`` largest request body the server takes with a writing key (1 GiB)
``TOMOLIVE_PUBLIC``     ``1`` lets anyone read without a key (writes still need it)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import BadInputError, MissingDataError

KEY_FILE_NAME = "api_key"
ADMIN_KEY_FILE_NAME = "admin_key"
DEFAULT_MAX_BODY_BYTES = 1 << 30
"""16 reconstructed rows of a 4096-pixel-wide detector in float32 (16 x 4096 x 4096 x 4 bytes):
tomolive's largest block; raw frames and weights are far smaller."""
POSTGRESQL_SCHEME = "postgresql://"  # Settings rewrites the short "postgres://" to it


def split_password(uri: str) -> tuple[str, str | None]:
    """A PostgreSQL URI without its password, and the password (None when it has none).

    Tiled 0.2.20 initialises a new authentication database in a subprocess handed
    ``str(engine.url)``, where SQLAlchemy masks the password as ``***``; so the password
    travels in ``PGPASSWORD`` instead (asyncpg and libpq read it when a URI has none).
    :mod:`tomolive.server.tiled_serve` creates that database before Tiled starts, so Tiled's
    subprocess is only its fall-back, but the server's connections use the same route.
    """
    parsed = urlsplit(uri)
    if not uri.startswith(POSTGRESQL_SCHEME) or parsed.password is None:
        return uri, None
    netloc = parsed.netloc.replace(f":{parsed.password}@", "@", 1)
    return urlunsplit(parsed._replace(netloc=netloc)), unquote(parsed.password)


@dataclass(frozen=True)
class Settings:
    """Where tomolive keeps data and how it reaches Tiled."""

    data_dir: Path = field(default_factory=lambda: Path("tomolive-data"))
    host: str = "127.0.0.1"
    port: int = 8000
    tiled_uri: str | None = None
    api_key: str | None = field(default=None, repr=False)
    public: bool = False
    catalog_uri: str | None = field(default=None, repr=False)
    auth_uri: str | None = field(default=None, repr=False)
    admin_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        for name in ("catalog_uri", "auth_uri"):  # SQLAlchemy knows only the long scheme name
            uri = getattr(self, name)
            if uri is not None and uri.startswith("postgres://"):
                object.__setattr__(self, name, POSTGRESQL_SCHEME + uri.removeprefix("postgres://"))
        if self.catalog_uri is not None and not self.catalog_uri.startswith(POSTGRESQL_SCHEME):
            raise BadInputError(
                f"catalog URI {self.catalog_uri!r}: expected postgresql://USER:PASSWORD@HOST:PORT/DB "
                "(leave it unset for the embedded SQLite catalog in the data directory)"
            )
        if self.max_body_bytes <= 0:
            raise BadInputError(f"TOMOLIVE_MAX_BODY_BYTES={self.max_body_bytes}: expected a positive number of bytes")

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
        if "TOMOLIVE_CATALOG_URI" in env:
            values["catalog_uri"] = env["TOMOLIVE_CATALOG_URI"]
        if "TOMOLIVE_AUTH_DB_URI" in env:
            values["auth_uri"] = env["TOMOLIVE_AUTH_DB_URI"]
        if "TOMOLIVE_ADMIN_KEY" in env:
            values["admin_key"] = env["TOMOLIVE_ADMIN_KEY"]
        if "TOMOLIVE_MAX_BODY_BYTES" in env:
            values["max_body_bytes"] = int(env["TOMOLIVE_MAX_BODY_BYTES"])
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
            f"no API key: set TOMOLIVE_API_KEY or start the server once with 'tomolive serve' "
            f"(it writes {self.key_file})."
        )

    @property
    def auth_db_uri(self) -> str:
        """Tiled's authentication database: explicit, else SQLite in the data directory."""
        return self.auth_uri or f"sqlite:///{self.data_dir.absolute() / 'auth.db'}"

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir.absolute() / ADMIN_KEY_FILE_NAME

    def resolved_admin_key(self) -> str:
        """The admin key: explicit/env value, else the admin key file written by ``tomolive serve``."""
        if self.admin_key:
            return self.admin_key
        if self.admin_key_file.exists():
            return self.admin_key_file.read_text().strip()
        raise MissingDataError(
            f"no admin key: set TOMOLIVE_ADMIN_KEY or pass --data-dir of the server "
            f"('tomolive serve' writes {self.admin_key_file})."
        )

    def save_api_key(self, key: str) -> Settings:
        """Write ``key`` to the user-only key file (mode 600) and return settings carrying it."""
        write_private(self.key_file, key)
        return replace(self, api_key=key)

    def save_admin_key(self, key: str) -> Settings:
        """Write ``key`` to the user-only admin key file (mode 600) and return settings carrying it."""
        write_private(self.admin_key_file, key)
        return replace(self, admin_key=key)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` by a file of mode 600 holding ``text`` and a newline."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = path.with_name(path.name + ".new")
    fresh.unlink(missing_ok=True)
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    fresh.replace(path)
