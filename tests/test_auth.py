"""Writes need the API key; reads need it too unless the server runs with --public."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from tiled.client import from_uri
from tiled.client.utils import ClientError

from tomolive.config import Settings
from tomolive.server import running_server

from .conftest import free_port

NEW_CONTAINER = {"data_sources": [], "metadata": {}, "structure_family": "container", "specs": []}


def test_private_server_refuses_anonymous_reads_and_writes(tiled_server):
    api = f"{tiled_server.uri}/api/v1"
    assert httpx.get(f"{api}/metadata/").status_code == 401
    assert httpx.post(f"{api}/metadata/", json=NEW_CONTAINER).status_code == 401
    assert (
        httpx.post(f"{api}/metadata/", json=NEW_CONTAINER, headers={"Authorization": "Apikey wrong-key"}).status_code
        == 401
    )
    keyed = httpx.get(f"{api}/metadata/", headers={"Authorization": f"Apikey {tiled_server.api_key}"})
    assert keyed.status_code == 200


def test_public_server_allows_anonymous_reads_only(tmp_path):
    settings = Settings(data_dir=tmp_path, port=free_port(), public=True)
    with running_server(settings) as server:
        writer = from_uri(server.uri, api_key=server.api_key)
        writer.write_array(np.arange(6.0).reshape(2, 3), key="ramp")

        reader = from_uri(server.uri)  # no key
        np.testing.assert_array_equal(reader["ramp"].read(), np.arange(6.0).reshape(2, 3))
        with pytest.raises(ClientError) as refused:
            reader.write_array(np.zeros(3), key="vandal")
        assert refused.value.response.status_code in (401, 403)
        assert "vandal" not in writer
    key_file = tmp_path / "api_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
