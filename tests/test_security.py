"""Cluster credentials and call tokens (edgenode/security.py); keygen: tests/test_keygen.py."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edgenode.errors import ConfigError, PermissionDenied, Unauthenticated
from edgenode.security import (
    TOKEN_MAX_AGE_S,
    TokenSigner,
    TokenVerifier,
    issue_member,
    load_credentials,
    new_cluster,
    write_private,
)


@pytest.fixture(scope="module")
def cluster() -> tuple[bytes, object]:
    return new_cluster("home")


def test_a_member_token_proves_membership_and_is_cached(cluster) -> None:
    _, member = cluster
    verifier = TokenVerifier(member.ca_pem)
    token = TokenSigner(member).token()
    assert verifier.check(token) == "member"
    assert verifier.check(token) == "member"  # second time from the cache


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("none", Unauthenticated, "no cluster credential"),
        ("garbage", PermissionDenied, "malformed"),
        ("other cluster", PermissionDenied, "another cluster"),
        ("expired", PermissionDenied, "not valid now"),
        ("stale", PermissionDenied, "stale credential token"),
        ("forged signature", PermissionDenied, "bad signature"),
    ],
)
def test_tokens_that_do_not_prove_membership_are_refused(cluster, case, error, message) -> None:
    ca, member = cluster
    verifier = TokenVerifier(member.ca_pem)
    if case == "none":
        token = None
    elif case == "garbage":
        token = "v1.not.a.token"
    elif case == "other cluster":
        token = TokenSigner(new_cluster("home")[1]).token()  # same name, another CA
    elif case == "expired":
        token = TokenSigner(issue_member(ca, days=-1)).token()
    elif case == "stale":
        token = TokenSigner(member, clock=lambda: 1e9).token()  # made long ago
    else:
        other = issue_member(ca)  # a member's certificate with another member's signature
        mine, theirs = TokenSigner(member).token(), TokenSigner(other).token()
        token = ".".join(mine.split(".")[:3] + theirs.split(".")[3:])
    with pytest.raises(error, match=message):
        verifier.check(token)


def test_a_verified_token_expires_from_the_cache(cluster) -> None:
    _, member = cluster
    now = [1.9e9]
    token = TokenSigner(member, clock=lambda: now[0]).token()
    verifier = TokenVerifier(member.ca_pem, clock=lambda: now[0])
    verifier.check(token)
    now[0] += TOKEN_MAX_AGE_S + 1
    with pytest.raises(PermissionDenied, match="stale"):
        verifier.check(token)


def test_credential_files_round_trip_and_bad_ones_name_the_problem(cluster, tmp_path) -> None:
    ca, member = cluster
    path = tmp_path / "cluster.pem"
    write_private(path, member.bundle())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_credentials(path)
    assert (loaded.cluster, loaded.member) == ("home", "member")
    assert loaded.bundle() == member.bundle()

    def broken(name: str, data: bytes) -> Path:
        p = tmp_path / name
        p.write_bytes(data)
        return p

    other = new_cluster("home")[1]
    cases = {
        "missing": (tmp_path / "nope.pem", "No such file"),
        "empty": (broken("empty.pem", b""), "expected a private key and two certificates"),
        "foreign key": (
            broken("k.pem", other.key_pem + member.cert_pem + member.ca_pem),
            "does not belong to the certificate",
        ),
        "foreign CA": (
            broken("ca.pem", member.key_pem + member.cert_pem + other.ca_pem),
            "not signed by the CA",
        ),
        "expired": (broken("old.pem", issue_member(ca, days=-1).bundle()), "expired on"),
    }
    for name, (file, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_credentials(file)
        assert name
