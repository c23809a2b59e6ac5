"""Signed documents on the wire: what the worker's checks refuse, message by message (no sockets)."""

from __future__ import annotations

import logging
import secrets

import msgpack
import numpy as np
import pytest

from tomolive.cli import main as tomolive_main
from tomolive.wire import (
    MAX_AGE_S,
    SECRET_ENV,
    Rejected,
    Signer,
    Verifier,
    WireSecretError,
    load_secret,
    pack,
    unpack,
)
from tomolive.worker import DropLog, parse

SECRET = secrets.token_hex(32).encode()
OTHER = secrets.token_hex(32).encode()
START = {"uid": "a1", "time": 1.0, "image": np.arange(6, dtype=np.uint16).reshape(2, 3)}


def _message(body: bytes, name: bytes = b"start", prefix: bytes = b"") -> bytes:
    return b" ".join([prefix, name, body])


def _flip_last_bit(body: bytes) -> bytes:
    return body[:-1] + bytes([body[-1] ^ 1])


def test_signed_message_round_trips_and_arrays_survive():
    body = Signer(SECRET).sign(b"", "start", pack(START))
    name, doc = parse(_message(body), b"", Verifier([SECRET]))
    assert name == "start" and doc["uid"] == "a1"
    np.testing.assert_array_equal(doc["image"], START["image"])


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (lambda: _message(pack(START)), "unsigned"),
        (lambda: _message(Signer(OTHER).sign(b"", "start", pack(START))), "unknown key"),
        (
            lambda: _message(Signer(SECRET).sign(b"", "start", pack(START)), name=b"stop"),
            "bad signature",
        ),  # name swapped
        (
            lambda: _message(Signer(SECRET).sign(b"", "start", pack(START)), prefix=b"bl2"),
            "bad signature",
        ),  # prefix swapped
        (
            lambda: _message(_flip_last_bit(Signer(SECRET).sign(b"", "start", pack(START)))),
            "bad signature",
        ),  # payload altered
        (lambda: _message(Signer(SECRET).sign(b"", "start", b"\xc1\xc1")), "not msgpack"),
        (lambda: _message(Signer(SECRET).sign(b"", "start", pack([1, 2]))), "a list, not a mapping"),
        (
            lambda: _message(Signer(SECRET).sign(b"", "bogusname", pack(START)), name=b"bogusname"),
            "unknown document name",
        ),
        (lambda: _message(b"x", name=b"\xff\xfe"), "unknown document name"),
        (lambda: b"no-spaces-at-all", "not 'prefix name document'"),
        (lambda: b"", "not 'prefix name document'"),
    ],
)
def test_each_bad_message_is_refused_with_its_reason(message, why):
    with pytest.raises(Rejected, match=why):  # signed now, not at collection: within the time window
        parse(message(), b"", Verifier([SECRET]))


def test_what_a_sender_wrote_stays_on_one_escaped_line():
    bad_array = msgpack.ExtType(1, msgpack.packb(["<u2\ninjected line", [1], b"\0\0"]))
    body = Signer(SECRET).sign(b"", "event", msgpack.packb({"image": bad_array}))
    for message in (_message(body, b"event"), _message(b"x", name="start\n\u2028".encode())):
        with pytest.raises(Rejected) as refused:
            parse(message, b"", Verifier([SECRET]))
        assert "\n" not in str(refused.value) and str(refused.value).isascii(), refused.value


def test_a_replayed_or_stale_message_is_refused():
    verifier, signer = Verifier([SECRET]), Signer(SECRET)
    first, second = (_message(signer.sign(b"", "event", pack({"seq_num": i})), b"event") for i in (1, 2))
    assert parse(second, b"", verifier)[1] == {"seq_num": 2}
    for replay in (second, first):  # the same message again, or an older one of the same publisher
        with pytest.raises(Rejected, match="replayed"):
            parse(replay, b"", verifier)
    old = Signer(SECRET, clock=lambda: 0).sign(b"", "start", pack(START))
    with pytest.raises(Rejected, match="outside the 300 s window"):
        parse(_message(old), b"", verifier)


def test_publishers_are_forgotten_once_their_messages_could_no_longer_be_replayed():
    now = [10**15]
    verifier = Verifier([SECRET], clock=lambda: now[0])
    for _ in range(100):
        parse(_message(Signer(SECRET, clock=lambda: now[0]).sign(b"", "start", pack(START))), b"", verifier)
    assert len(verifier._last) == 100
    now[0] += int((MAX_AGE_S + 1) * 1e9)
    parse(_message(Signer(SECRET, clock=lambda: now[0]).sign(b"", "start", pack(START))), b"", verifier)
    assert len(verifier._last) == 1


def test_rotation_accepts_the_old_and_the_new_secret():
    verifier = Verifier([OTHER, SECRET])
    for secret in (OTHER, SECRET):
        body = Signer(secret).sign(b"bl", "stop", pack({"uid": "s"}))
        assert parse(_message(body, b"stop", b"bl"), b"bl", verifier) == ("stop", {"uid": "s"})


def test_unsigned_documents_only_with_no_verifier_and_never_unpickled():
    assert parse(_message(pack(START)), b"", None)[1]["uid"] == "a1"
    with pytest.raises(Rejected, match="prefix 'bl2', not 'bl1'"):
        parse(_message(pack(START), prefix=b"bl2"), b"bl1", None)
    assert unpack(pack({"a": 1})) == {"a": 1}


def test_secret_from_file_600_or_env_never_short_or_shared(tmp_path, monkeypatch):
    path = tmp_path / "wire.secret"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    assert load_secret(path) == SECRET
    path.chmod(0o644)
    with pytest.raises(WireSecretError, match=f"mode 644\\); chmod 600 {path}"):
        load_secret(path)
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(WireSecretError, match="has 5 bytes, fewer than 32"):
        load_secret()
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    assert load_secret() == SECRET


def test_worker_refuses_to_start_without_a_secret(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert tomolive_main(["worker", "--zmq", "127.0.0.1:1", "--uri", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"tomolive worker: no wire secret: set {SECRET_ENV} or pass a secret file "
        "(or --insecure-unsigned: anyone's documents)"
    ]
    shared = tmp_path / "wire.secret"
    shared.write_bytes(SECRET)
    shared.chmod(0o640)
    assert tomolive_main(["worker", "--zmq", "127.0.0.1:1", "--secret-file", str(shared)]) == 2
    assert "chmod 600" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tomolive_main(["worker", "--zmq", "127.0.0.1:1", "--max-message-mb", "-1"])


def test_drop_log_writes_a_line_each_until_flooded_then_counts(caplog):
    now = [0.0]
    log = DropLog(burst=3, window_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="tomolive.worker"):
        for i in range(10):
            log.drop("refused", f"message {i}")
        now[0] = 61.0
        log.drop("callback", "message 10")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == [f"tomolive worker: dropped a message: message {i}" for i in range(3)]
    assert lines[3] == "tomolive worker: dropped 7 more messages without a line each: 7 refused"
    assert lines[4:] == ["tomolive worker: dropped a message: message 10"] and log.total == 11
