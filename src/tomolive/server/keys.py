"""API keys issued by tomolive's Tiled server: one admin key, one writer key, read-only keys.

Tiled's single-user key cannot be scoped, so both profiles in ``tiled_config/`` run Tiled in
its multi-user mode: keys live hashed in an authentication database, each with scopes. A
built-in account (``tomolive-admin``, password random per server start unless
``TOMOLIVE_ADMIN_PASSWORD`` is set) exists only so that ``tomolive serve`` can issue two keys:

- the admin key (``DATA_DIR/admin_key``): every admin scope; issues and revokes keys. The
  operator's, never the pipeline's.
- the writer key (``DATA_DIR/api_key``): what the pipeline, ``tomolive worker`` and TiledWriter
  use: :data:`WRITER_SCOPES`, which read, create and update nodes but cannot delete them,
  their revisions or keys.

Every key gets a service principal of its own, so ``/auth/whoami`` with a key lists that key
alone, never another key's prefix or note::

    tomolive key                      # read-only key (the default)
    tomolive key --writer             # another writer key, e.g. for a second beamline host
    tomolive key --revoke 1a2b3c4d    # revoke a key by its first eight characters
"""

from __future__ import annotations

from typing import Any

import httpx

from ..errors import BadInputError, TomoliveError

PROVIDER = "tomolive"
ADMIN_USER = "tomolive-admin"
READ_ONLY_SCOPES = ("read:metadata", "read:data")
WRITER_SCOPES = ("read:metadata", "read:data", "write:metadata", "write:data", "create:node", "register")
ADMIN_SCOPES = ("inherit",)  # every scope of the admin role, as Tiled resolves it at use
PAGE = 100


def _api(uri: str) -> str:
    return f"{uri.rstrip('/')}/api/v1"


def _checked(response: httpx.Response, what: str) -> Any:
    if response.is_error:
        raise TomoliveError(f"{what}: {response.request.url} answered {response.status_code} {response.text[:300]}")
    return response.json() if response.content else None


def key_headers(api_key: str) -> dict[str, str]:
    """HTTP headers that authenticate with ``api_key``."""
    return {"Authorization": f"Apikey {api_key}"}


def principal_of(uri: str, api_key: str) -> str | None:
    """UUID of the principal holding ``api_key`` on the server at ``uri``; None if the key is unknown."""
    response = httpx.get(f"{_api(uri)}/auth/whoami", headers=key_headers(api_key))
    if response.status_code == 401:
        return None
    body = _checked(response, "checking an API key")
    return body["uuid"] if body else None


def key_scopes(uri: str, api_key: str) -> frozenset[str] | None:
    """The scopes of ``api_key`` on the server at ``uri``; None if the key is unknown or expired."""
    response = httpx.get(f"{_api(uri)}/auth/apikey", headers=key_headers(api_key))
    if response.status_code == 401:
        return None
    return frozenset(_checked(response, "checking an API key")["scopes"])


def admin_login(uri: str, admin_password: str) -> dict[str, str]:
    """Log in as the built-in admin account; headers carrying its access token."""
    token = _checked(
        httpx.post(
            f"{_api(uri)}/auth/provider/{PROVIDER}/token", data={"username": ADMIN_USER, "password": admin_password}
        ),
        f"logging in as {ADMIN_USER}",
    )["access_token"]
    return {"Authorization": f"Bearer {token}"}


def issue_key(
    uri: str, headers: dict[str, str], scopes: tuple[str, ...], note: str, expires_in: int | None = None
) -> str:
    """A new key with ``scopes`` for a new service principal of its own; ``headers`` must be an admin's.

    ``expires_in`` is in seconds (None: never); it must be positive.
    """
    if expires_in is not None and expires_in <= 0:
        raise BadInputError(f"expires_in={expires_in}: a key's lifetime must be a positive number of seconds")
    role = "user" if set(scopes) <= set(READ_ONLY_SCOPES) else "admin"  # a key cannot exceed its role
    principal = _checked(
        httpx.post(f"{_api(uri)}/auth/principal", params={"role": role}, headers=headers),
        f"creating a service principal for a {note!r} key",
    )["uuid"]
    body = {"scopes": list(scopes), "note": note, "expires_in": expires_in, "access_tags": None}
    url = f"{_api(uri)}/auth/principal/{principal}/apikey"
    return _checked(httpx.post(url, json=body, headers=headers), f"creating a {note!r} key")["secret"]


def create_key(
    uri: str,
    admin_key: str,
    *,
    read_only: bool = True,
    note: str | None = None,
    expires_in: int | None = None,
) -> str:
    """A new read-only key (or writer key, ``read_only=False``), issued with the admin key.

    Read-only keys carry only ``read:metadata`` and ``read:data``: Tiled answers their
    writes with 401. Writer keys carry :data:`WRITER_SCOPES`.
    """
    scopes = READ_ONLY_SCOPES if read_only else WRITER_SCOPES
    note = note or ("tomolive read-only" if read_only else "tomolive writer")
    return issue_key(uri, key_headers(admin_key), scopes, note, expires_in)


def _principals(uri: str, headers: dict[str, str]) -> list[dict]:
    """Every principal (with its keys), a page at a time."""
    found: list[dict] = []
    while True:
        params = {"page[offset]": len(found), "page[limit]": PAGE}
        page = _checked(httpx.get(f"{_api(uri)}/auth/principal", params=params, headers=headers), "listing keys")
        found += page
        if len(page) < PAGE:
            return found


def revoke_key(uri: str, headers: dict[str, str], first_eight: str) -> None:
    """Revoke the key whose secret starts with ``first_eight``; ``headers`` must be an admin's."""
    for principal in _principals(uri, headers):
        if any(key["first_eight"] == first_eight[:8] for key in principal.get("api_keys", [])):
            url = f"{_api(uri)}/auth/principal/{principal['uuid']}/apikey"
            _checked(httpx.delete(url, params={"first_eight": first_eight[:8]}, headers=headers), "revoking a key")
            return
    raise BadInputError(f"no key starts with {first_eight[:8]!r} on the server at {uri}")
