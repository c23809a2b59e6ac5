"""Least privilege, tried as an attacker holding each key: writer, read-only, expired, none."""

from __future__ import annotations

import sqlite3
import uuid

import httpx
import numpy as np
import pytest
from tiled.client import from_uri
from tiled.client.utils import ClientError

from tomolive.cli import main as tomolive_main
from tomolive.config import Settings
from tomolive.errors import BadInputError, TomoliveError
from tomolive.server.keys import (
    ADMIN_SCOPES,
    READ_ONLY_SCOPES,
    WRITER_SCOPES,
    create_key,
    key_headers,
    key_scopes,
)

REFUSED = frozenset({401, 403})


def _api(server: Settings) -> str:
    return f"{server.uri}/api/v1"


def _principal_count(server: Settings) -> int:
    response = httpx.get(
        f"{_api(server)}/auth/principal", params={"page[limit]": 300}, headers=key_headers(server.admin_key or "")
    )
    response.raise_for_status()
    return len(response.json())


def _key_cli(server: Settings, *args: str) -> list[str]:
    return ["key", "--uri", server.uri, "--admin-key", server.admin_key or "", *args]


def test_the_pipeline_writer_key_creates_and_updates_but_cannot_delete_or_administer(tiled_server):
    assert key_scopes(tiled_server.uri, tiled_server.api_key) == frozenset(WRITER_SCOPES)
    assert key_scopes(tiled_server.uri, tiled_server.admin_key) == frozenset(ADMIN_SCOPES)
    assert not {"delete:node", "delete:revision", "admin:apikeys", "write:principals"} & set(WRITER_SCOPES)

    writer = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
    name = f"keys-{uuid.uuid4().hex[:8]}"
    scan = writer.create_container(key=name, metadata={"status": "running"})
    volume = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    scan.write_array(volume, key="recon")
    scan.update_metadata({"status": "complete"}, drop_revision=True)  # what TiledResult.update does

    api, as_writer = _api(tiled_server), key_headers(tiled_server.api_key)
    assert httpx.delete(f"{api}/metadata/{name}", params={"recursive": True}, headers=as_writer).status_code in REFUSED
    with pytest.raises(ClientError) as refused:
        scan.delete_contents("recon", external_only=False)  # what TiledResult.remove does
    assert refused.value.response.status_code in REFUSED
    with pytest.raises(ClientError) as refused:
        scan.delete(recursive=True, external_only=False)  # what TiledResult.create did on reprocessing
    assert refused.value.response.status_code in REFUSED
    assert httpx.get(f"{api}/auth/principal", headers=as_writer).status_code in REFUSED
    assert httpx.post(f"{api}/auth/principal", params={"role": "admin"}, headers=as_writer).status_code in REFUSED
    assert httpx.post(f"{api}/auth/apikey", json={"scopes": ["inherit"]}, headers=as_writer).status_code in REFUSED
    with pytest.raises(TomoliveError, match="creating a service principal"):
        create_key(tiled_server.uri, tiled_server.api_key)  # the writer key mints no keys

    kept = from_uri(tiled_server.uri, api_key=tiled_server.admin_key)[name]
    assert list(kept) == ["recon"] and kept.metadata["status"] == "complete"
    np.testing.assert_array_equal(kept["recon"].read(), volume)


def test_tomolive_key_is_read_only_by_default_and_sees_only_itself(tiled_server, capsys):
    assert tomolive_main(_key_cli(tiled_server, "--note", "proposal 1234")) == 0
    reader = capsys.readouterr().out.strip()
    assert len(reader) == 72 and key_scopes(tiled_server.uri, reader) == frozenset(READ_ONLY_SCOPES)

    api, as_reader = _api(tiled_server), key_headers(reader)
    me = httpx.get(f"{api}/auth/whoami", headers=as_reader).json()
    assert [(k["first_eight"], k["note"]) for k in me["api_keys"]] == [(reader[:8], "proposal 1234")]
    assert tiled_server.api_key[:8] not in str(me) and tiled_server.admin_key[:8] not in str(me)
    for role in ("admin", "user"):
        assert httpx.post(f"{api}/auth/principal", params={"role": role}, headers=as_reader).status_code in REFUSED
    assert httpx.get(f"{api}/auth/principal", headers=as_reader).status_code in REFUSED
    assert httpx.post(f"{api}/auth/apikey", json={"scopes": ["read:data"]}, headers=as_reader).status_code in REFUSED
    with pytest.raises(ClientError) as refused:
        from_uri(tiled_server.uri, api_key=reader).create_container(key="vandal")
    assert refused.value.response.status_code in REFUSED

    # The writer's own whoami lists no other key either (each key has its own principal).
    mine = httpx.get(f"{api}/auth/whoami", headers=key_headers(tiled_server.api_key)).json()
    assert [k["first_eight"] for k in mine["api_keys"]] == [tiled_server.api_key[:8]]


@pytest.mark.parametrize("expires_in", ["0", "-5"])
def test_non_positive_expiry_is_refused_in_one_line(tiled_server, capsys, expires_in):
    before = _principal_count(tiled_server)
    assert tomolive_main(_key_cli(tiled_server, "--expires-in", expires_in)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"--expires-in {expires_in}" in err and "positive" in err
    with pytest.raises(BadInputError, match="positive"):
        create_key(tiled_server.uri, tiled_server.admin_key, expires_in=int(expires_in))
    assert _principal_count(tiled_server) == before  # nothing issued


def test_an_expired_key_is_refused(tiled_server):
    reader = create_key(tiled_server.uri, tiled_server.admin_key, note="expires", expires_in=3600)
    as_reader = key_headers(reader)
    assert httpx.get(f"{_api(tiled_server)}/metadata/", headers=as_reader).status_code == 200
    with sqlite3.connect(tiled_server.data_dir / "auth.db") as db:  # an hour passes
        changed = db.execute(
            "UPDATE api_keys SET expiration_time = '2000-01-01 00:00:00.000000' WHERE first_eight = ?", (reader[:8],)
        ).rowcount
    assert changed == 1
    assert httpx.get(f"{_api(tiled_server)}/metadata/", headers=as_reader).status_code == 401
    assert key_scopes(tiled_server.uri, reader) is None


def test_writer_keys_and_revocation_through_the_cli(tiled_server, capsys):
    assert tomolive_main(_key_cli(tiled_server, "--writer", "--note", "second host")) == 0
    second = capsys.readouterr().out.strip()
    assert key_scopes(tiled_server.uri, second) == frozenset(WRITER_SCOPES)
    from_uri(tiled_server.uri, api_key=second).write_array(np.ones(3), key=f"second-{uuid.uuid4().hex[:8]}")

    assert tomolive_main(_key_cli(tiled_server, "--revoke", second[:8])) == 0
    assert capsys.readouterr().out.strip() == f"revoked the key starting {second[:8]}"
    assert key_scopes(tiled_server.uri, second) is None
    assert httpx.get(f"{_api(tiled_server)}/metadata/", headers=key_headers(second)).status_code == 401

    assert tomolive_main(_key_cli(tiled_server, "--revoke", second[:8])) == 1  # gone already
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no key starts with {second[:8]!r}" in err


def test_the_writer_key_cannot_issue_keys_through_the_cli(tiled_server, capsys):
    code = tomolive_main(["key", "--uri", tiled_server.uri, "--admin-key", tiled_server.api_key])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("tomolive key: ")
