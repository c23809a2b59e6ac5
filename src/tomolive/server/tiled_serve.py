"""The Tiled server process: create the profile's databases here, then run ``tiled serve config``.

``python -m tomolive.server.tiled_serve PROFILE [tiled serve config options]`` is what
:func:`tomolive.server.launch.running_server` starts. Tiled creates a catalog database by
starting ``tiled catalog init`` in a subprocess on every start, and a new authentication
database with ``tiled admin initialize-database``; each imports Tiled again. This process has
imported Tiled already to serve, so creating both here halves a server start
(docs/measurements/moves.md). The profiles therefore leave the catalog's
``init_if_not_exists`` off; the authentication database's stays on, a fall-back Tiled takes
only if it finds that database missing.

It also makes Tiled look up a request's API key once instead of three or four times
(:mod:`tomolive.store.internals`): half of a request's server CPU. And it guards the server:
new files private (umask 077), key material redacted from every log line
(:mod:`~tomolive.server.redact`), request bodies capped before they are read
(:mod:`~tomolive.server.limits`, ``TOMOLIVE_MAX_BODY_BYTES``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from types import ModuleType

from sqlalchemy.ext.asyncio import create_async_engine
from tiled.alembic_utils import (
    DatabaseUpgradeNeeded,
    UninitializedDatabase,
    UnrecognizedDatabase,
    check_database,
    stamp_head,
)
from tiled.authn_database import alembic_constants as authn_migrations
from tiled.authn_database import core as authn_schema
from tiled.catalog import alembic_constants as catalog_migrations
from tiled.catalog import core as catalog_schema
from tiled.catalog import from_uri as catalog_from_uri
from tiled.commandline.main import cli_app
from tiled.config import parse_configs
from tiled.utils import ensure_specified_sql_driver

from ..config import DEFAULT_MAX_BODY_BYTES
from ..store import internals
from . import limits, redact
from .modes import SERVER_UMASK

USAGE = "usage: python -m tomolive.server.tiled_serve PROFILE [tiled serve config options]"
SCHEMAS = {
    "auth": (authn_schema, authn_migrations, "tiled admin"),
    "catalog": (catalog_schema, catalog_migrations, "tiled catalog"),
}
"""Tiled's tables, migrations and the command that upgrades them, per kind of database."""


def create_if_missing(uri: str, schema: ModuleType, migrations: ModuleType) -> bool:
    """Create Tiled's tables (``schema``) in the database at ``uri`` unless it has them; True if created.

    The steps of Tiled's own init commands: tables, then the alembic revision stamp. Call it
    from synchronous code (it runs its own event loop).
    """
    uri = ensure_specified_sql_driver(uri)

    async def create() -> bool:
        engine = create_async_engine(uri)
        try:
            await check_database(engine, schema.REQUIRED_REVISION, schema.ALL_REVISIONS)
        except UninitializedDatabase:
            await schema.initialize_database(engine)
            return True
        finally:
            await engine.dispose()
        return False

    created = asyncio.run(create())
    if created:
        stamp_head(migrations.ALEMBIC_INI_TEMPLATE_PATH, migrations.ALEMBIC_DIR, uri)
    return created


def create_databases(profile: Path) -> list[str]:
    """Create the authentication database and the catalogs that the Tiled ``profile`` names,
    where missing; return what was created (``"auth"``, ``"catalog"``).

    A database of an older Tiled raises ``SystemExit`` with the command that upgrades it.
    """
    config = parse_configs(profile)
    wanted = [("auth", config.database.uri)] if config.database is not None and config.database.uri else []
    wanted += [
        ("catalog", tree.args["uri"])
        for tree in config.trees or []
        if tree.tree_type is catalog_from_uri and tree.args and "uri" in tree.args
    ]
    created = []
    for kind, uri in wanted:
        schema, migrations, command = SCHEMAS[kind]
        try:
            if create_if_missing(uri, schema, migrations):
                created.append(kind)
        except (DatabaseUpgradeNeeded, UnrecognizedDatabase) as err:
            raise SystemExit(f"{err}\nUpgrade it with `{command} upgrade-database <its URI>`.") from None
    return created


def main(argv: list[str]) -> None:
    """Create the databases of the profile ``argv[0]``, then serve it with ``tiled serve config argv``."""
    if not argv or argv[0].startswith("-"):
        raise SystemExit(USAGE)
    os.umask(SERVER_UMASK)
    redact.install()
    create_databases(Path(argv[0]))
    internals.share_api_key_lookups()
    limits.install(int(os.environ.get("TOMOLIVE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)))
    cli_app(args=["serve", "config", *argv], prog_name="tiled")


if __name__ == "__main__":
    main(sys.argv[1:])
