"""API keys issued by tomolive's Tiled server: a writer key and read-only keys.

Tiled's single-user key cannot be scoped, so both profiles in ``tiled_config/`` run Tiled in
its multi-user mode: keys live hashed in an authentication database, each with scopes. A
built-in admin account (``tomolive-admin``, password random per server start unless
``TOMOLIVE_ADMIN_PASSWORD`` is set) exists only so ``tomolive serve`` can issue the first,
writer key to an admin service principal; everything after that uses keys::

    tomolive key --read-only          # prints a key that reads but cannot write
"""

from __future__ import annotations

from typing import Any

import httpx

from ..errors import TomoliveError

PROVIDER = "tomolive"
ADMIN_USER = "tomolive-admin"
READ_ONLY_SCOPES = ("read:metadata", "read:data")
WRITER_SCOPES = ("inherit",)  # every scope of the admin role, as Tiled resolves it at use


def _api(uri: str) -> str:
    return f"{uri.rstrip('/')}/api/v1"


def _checked(response: httpx.Response, what: str) -> Any:
    if response.is_error:
        raise TomoliveError(f"{what}: {response.request.url} answered {response.status_code} {response.text[:300]}")
    return response.json()


def principal_of(uri: str, api_key: str) -> str | None:
    """UUID of the principal holding ``api_key`` on the server at ``uri``; None if the key is unknown."""
    response = httpx.get(f"{_api(uri)}/auth/whoami", headers={"Authorization": f"Apikey {api_key}"})
    if response.status_code == 401:
        return None
    body = _checked(response, "checking an API key")
    return body["uuid"] if body else None


def _new_key(
    uri: str, headers: dict[str, str], principal: str, scopes: tuple[str, ...], note: str, expires_in: int | None
) -> str:
    body = {"scopes": list(scopes), "note": note, "expires_in": expires_in, "access_tags": None}
    url = f"{_api(uri)}/auth/principal/{principal}/apikey"
    return _checked(httpx.post(url, json=body, headers=headers), f"creating a {note!r} key")["secret"]


def issue_writer_key(uri: str, admin_password: str) -> str:
    """Log in as the built-in admin, make an admin service principal, and return its new key."""
    token = _checked(
        httpx.post(
            f"{_api(uri)}/auth/provider/{PROVIDER}/token", data={"username": ADMIN_USER, "password": admin_password}
        ),
        f"logging in as {ADMIN_USER}",
    )["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    service = _checked(
        httpx.post(f"{_api(uri)}/auth/principal", params={"role": "admin"}, headers=headers),
        "creating the tomolive service principal",
    )
    return _new_key(uri, headers, service["uuid"], WRITER_SCOPES, "tomolive writer", None)


def create_key(
    uri: str, api_key: str, *, read_only: bool, note: str | None = None, expires_in: int | None = None
) -> str:
    """A new key for the principal holding ``api_key`` (which must have ``admin:apikeys``).

    ``read_only`` keys carry only ``read:metadata`` and ``read:data``: Tiled answers their
    writes with 401. ``expires_in`` is in seconds (None: never).
    """
    principal = principal_of(uri, api_key)
    if principal is None:
        raise TomoliveError(f"the API key given is not known to the Tiled server at {uri}")
    scopes = READ_ONLY_SCOPES if read_only else WRITER_SCOPES
    note = note or ("tomolive read-only" if read_only else "tomolive writer")
    return _new_key(uri, {"Authorization": f"Apikey {api_key}"}, principal, scopes, note, expires_in)
