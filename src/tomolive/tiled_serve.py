"""The Tiled server process: create the profile's databases here, then run ``tiled serve config``.

``python -m tomolive.tiled_serve PROFILE [tiled serve config options]`` is what
:func:`tomolive.server.running_server` starts. Tiled creates a missing catalog or
authentication database by starting ``tiled catalog init`` / ``tiled admin
initialize-database`` in a subprocess, which imports Tiled again: 12 s and 4.6 s of a
2-core machine on every start, against well under a second for the same work in this
process, which has imported Tiled already to serve. The profiles therefore leave the
catalog's ``init_if_not_exists`` off and this module creates every database they name.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import ModuleType

from sqlalchemy.ext.asyncio import create_async_engine
from tiled.alembic_utils import UninitializedDatabase, check_database, stamp_head
from tiled.authn_database import alembic_constants as authn_alembic
from tiled.authn_database import core as authn_schema
from tiled.catalog import alembic_constants as catalog_alembic
from tiled.catalog import from_uri as catalog_tree
from tiled.catalog import core as catalog_schema
from tiled.commandline.main import cli_app
from tiled.config import parse_configs
from tiled.utils import ensure_specified_sql_driver


def create_if_missing(uri: str, schema: ModuleType, alembic: ModuleType) -> bool:
    """Create Tiled's tables (``schema``) in the database at ``uri`` unless it has them; True if created.

    The same steps as Tiled's own init commands: tables, then the alembic revision stamp.
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
        stamp_head(alembic.ALEMBIC_INI_TEMPLATE_PATH, alembic.ALEMBIC_DIR, uri)
    return created


def create_databases(profile: Path) -> None:
    """Create the authentication database and every catalog that the Tiled ``profile`` names."""
    config = parse_configs(profile)
    if config.database is not None and config.database.uri:
        create_if_missing(config.database.uri, authn_schema, authn_alembic)
    for tree in config.trees or []:
        if tree.tree_type is catalog_tree and tree.args and "uri" in tree.args:
            create_if_missing(tree.args["uri"], catalog_schema, catalog_alembic)


def main(argv: list[str]) -> None:
    """Create the databases of the profile ``argv[0]``, then serve it with ``tiled serve config argv``."""
    if not argv:
        raise SystemExit("usage: python -m tomolive.tiled_serve PROFILE [tiled serve config options]")
    create_databases(Path(argv[0]))
    cli_app(args=["serve", "config", *argv], prog_name="tiled")


if __name__ == "__main__":
    main(sys.argv[1:])
