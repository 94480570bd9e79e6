"""`edgenode keygen` (edgenode/_cli_keygen.py) and how key files are written
(edgenode/security.write_private): real files, real CLI processes."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgenode._cli_keygen import MAX_DAYS
from edgenode.errors import ConfigError
from edgenode.security import (
    DEFAULT_DAYS,
    TokenSigner,
    TokenVerifier,
    issue_member,
    load_credentials,
    new_cluster,
    write_private,
)


def _keygen(*args: str) -> subprocess.CompletedProcess[str]:
    """`edgenode keygen ARGS` in its own process. (tests.nodes.cli adds --insecure, which
    keygen does not take.)"""
    return subprocess.run(
        [sys.executable, "-m", "edgenode.cli", "keygen", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _refused(out: subprocess.CompletedProcess[str], *phrases: str) -> None:
    """Exit 2 with one line on stderr holding every phrase, and no traceback."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgenode: error: "), out.stderr
    for phrase in phrases:
        assert phrase in lines[0]
    assert out.stdout == ""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cluster made by `edgenode keygen` (read only: tests write elsewhere)."""
    out = tmp_path_factory.mktemp("keys") / "home"
    done = _keygen("--out", str(out), "--cluster", "home")
    assert done.returncode == 0, done.stderr
    return out


def test_keygen_creates_a_cluster_and_issues_members(keys: Path, tmp_path: Path) -> None:
    assert _mode(keys) == 0o700
    assert sorted(p.name for p in keys.iterdir()) == ["ca.pem", "cluster.pem"]  # no temporary
    assert _mode(keys / "ca.pem") == _mode(keys / "cluster.pem") == 0o600
    first = load_credentials(keys / "cluster.pem")
    assert first.cluster == "home"
    assert first.not_after > dt.datetime.now(dt.UTC) + dt.timedelta(days=DEFAULT_DAYS - 1)

    more = tmp_path / "pi-2"
    done = _keygen("--out", str(more), "--ca", str(keys / "ca.pem"), "--member", "pi-2",
                   "--days", "30")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(more / "cluster.pem")
    second = load_credentials(more / "cluster.pem")
    assert (second.member, second.ca_pem) == ("pi-2", first.ca_pem)
    assert second.not_after < dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    assert not (more / "ca.pem").exists()  # the CA stays where it was
    assert _mode(more) == 0o700 and _mode(more / "cluster.pem") == 0o600
    TokenVerifier(first.ca_pem).check(TokenSigner(second).token())  # same cluster


def test_existing_keys_are_replaced_only_with_force(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    assert _keygen("--out", str(out)).returncode == 0
    ca, member = (out / "ca.pem").read_bytes(), (out / "cluster.pem").read_bytes()

    _refused(_keygen("--out", str(out)), f"{out / 'ca.pem'} exists", "--force")
    (out / "cluster.pem").unlink()
    _refused(_keygen("--out", str(out)), f"{out / 'ca.pem'} exists")  # the CA alone counts
    assert (out / "ca.pem").read_bytes() == ca and not (out / "cluster.pem").exists()
    issued = _keygen("--out", str(out), "--ca", str(out / "ca.pem"))  # ca.pem is not touched
    assert issued.returncode == 0, issued.stderr
    _refused(_keygen("--out", str(out), "--ca", str(out / "ca.pem")), "cluster.pem exists")
    assert (out / "ca.pem").read_bytes() == ca

    forced = _keygen("--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "ca.pem").read_bytes() != ca and (out / "cluster.pem").read_bytes() != member
    load_credentials(out / "cluster.pem")
    assert _mode(out / "ca.pem") == _mode(out / "cluster.pem") == 0o600


def test_a_symlink_at_the_key_name_is_refused_or_replaced_never_followed(
    tmp_path: Path,
) -> None:
    out, victim = tmp_path / "keys", tmp_path / "victim"
    out.mkdir(mode=0o700)
    victim.write_text("not yours\n")
    (out / "cluster.pem").symlink_to(victim)
    _refused(_keygen("--out", str(out)), "cluster.pem exists")  # a dangling one counts too
    assert _keygen("--out", str(out), "--force").returncode == 0
    assert victim.read_text() == "not yours\n"
    assert not (out / "cluster.pem").is_symlink() and _mode(out / "cluster.pem") == 0o600


@pytest.mark.parametrize("with_ca", [False, True], ids=["new cluster", "--ca"])
def test_a_symlink_planted_at_the_temporary_is_not_followed(
    keys: Path, tmp_path: Path, with_ca: bool
) -> None:
    out, victim = tmp_path / "keys", tmp_path / "victim"
    out.mkdir(mode=0o700)
    victim.write_text("not yours\n")
    victim.chmod(0o644)
    for name in (".ca.pem.partial", ".cluster.pem.partial"):
        (out / name).symlink_to(victim)
    done = _keygen("--out", str(out), *(["--ca", str(keys / "ca.pem")] if with_ca else []))
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "not yours\n" and _mode(victim) == 0o644
    load_credentials(out / "cluster.pem")
    assert not (out / "cluster.pem").is_symlink() and _mode(out / "cluster.pem") == 0o600
    assert not (out / ".cluster.pem.partial").exists()
    assert (out / ".ca.pem.partial").is_symlink() == with_ca  # --ca writes no ca.pem


def test_a_stale_world_readable_temporary_does_not_lend_its_mode(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    out.mkdir(mode=0o700)
    for name in (".ca.pem.partial", ".cluster.pem.partial"):
        (out / name).write_text("left over by an interrupted run\n")
        (out / name).chmod(0o644)
    done = _keygen("--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "cluster.pem"]
    assert _mode(out / "ca.pem") == _mode(out / "cluster.pem") == 0o600
    load_credentials(out / "cluster.pem")


def test_write_private_replaces_the_temporary_and_the_file_atomically(tmp_path: Path) -> None:
    path, victim = tmp_path / "k.pem", tmp_path / "victim"
    victim.write_bytes(b"victim")
    partial = tmp_path / ".k.pem.partial"
    partial.symlink_to(victim)
    write_private(path, b"one")
    assert path.read_bytes() == b"one" and victim.read_bytes() == b"victim"
    partial.write_bytes(b"stale")
    partial.chmod(0o666)
    old = os.umask(0)  # the mode does not depend on the caller's umask
    try:
        write_private(path, b"two")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"two" and _mode(path) == 0o600 and not partial.exists()
    taken = tmp_path / "sub" / "k.pem"
    taken.mkdir(parents=True)
    with pytest.raises(IsADirectoryError):  # a failed write leaves no temporary behind
        write_private(taken, b"x")
    assert [p.name for p in taken.parent.iterdir()] == ["k.pem"]


def _self_signed(key: ec.EllipticCurvePrivateKey, *extensions: x509.ExtensionType) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a CA")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _not_cas(keys: Path) -> dict[str, tuple[bytes, str]]:
    """CA files that must be refused: their bytes, and what the error says."""
    ca = (keys / "ca.pem").read_bytes()
    key_end = ca.index(b"-----END PRIVATE KEY-----\n") + len(b"-----END PRIVATE KEY-----\n")
    other_ca, _ = new_cluster("home")
    expired, _ = new_cluster("home", days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=9))
    key = ec.generate_private_key(ec.SECP256R1())
    no_signing = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    return {
        "member credential": ((keys / "cluster.pem").read_bytes(), "basicConstraints CA=true"),
        "certificate only": (ca[key_end:], "no private key"),
        "key only": (ca[:key_end], "no readable certificate"),
        "no basicConstraints": (_self_signed(key), "basicConstraints CA=true"),
        "CA=false": (
            _self_signed(key, x509.BasicConstraints(ca=False, path_length=None)),
            "basicConstraints CA=true",
        ),
        "no keyCertSign": (
            _self_signed(key, x509.BasicConstraints(ca=True, path_length=0), no_signing),
            "does not allow signing",
        ),
        "another CA's key": (
            other_ca[: other_ca.index(b"-----BEGIN CERTIFICATE")] + ca[key_end:],
            "does not belong",
        ),
        "expired": (expired, "expired on"),
        "garbage": (b"\x00\x01 not pem at all", "no private key"),
        "damaged key": (ca.replace(b"\n", b"\n#", 2), "private key is unreadable"),
    }


def test_a_ca_file_that_is_not_a_ca_is_refused(keys: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = _not_cas(keys)
    for case, (data, phrase) in cases.items():
        bad = tmp_path / f"{case.replace(' ', '-')}.pem"
        bad.write_bytes(data)
        _refused(_keygen("--out", str(out), "--ca", str(bad)), f"--ca {bad}: ", phrase)
        assert not out.exists(), case  # nothing is created before the CA is checked
    _refused(_keygen("--out", str(out), "--ca", str(tmp_path / "nope.pem")), "No such file")
    _refused(_keygen("--out", str(out), "--ca", str(tmp_path)), "Is a directory")
    # The same code path accepts the real CA: the refusals above are about the files.
    assert _keygen("--out", str(out), "--ca", str(keys / "ca.pem")).returncode == 0


def test_issue_member_itself_refuses_what_is_not_a_ca(keys: Path) -> None:
    ca = (keys / "ca.pem").read_bytes()
    with pytest.raises(ConfigError, match="basicConstraints"):
        issue_member((keys / "cluster.pem").read_bytes())
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=DEFAULT_DAYS + 2)
    with pytest.raises(ConfigError, match="the CA expired on"):
        issue_member(ca, now=later)
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with pytest.raises(ConfigError, match="not valid before"):
        issue_member(ca, now=earlier)
    issue_member(ca, days=-1)  # an expired member (for tests) from a valid CA is still fine


@pytest.mark.parametrize("days", ["0", "-1", str(MAX_DAYS + 1)])
@pytest.mark.parametrize("with_ca", [False, True], ids=["new cluster", "--ca"])
def test_days_out_of_range_are_refused_in_every_mode(
    keys: Path, tmp_path: Path, days: str, with_ca: bool
) -> None:
    out = tmp_path / "out"
    ca = ["--ca", str(keys / "ca.pem")] if with_ca else []
    _refused(_keygen("--out", str(out), "--days", days, *ca), "--days", days)
    assert not out.exists()


def test_the_output_directory_is_owner_only_or_a_warning_says_it_is_not(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    assert _keygen("--out", str(nested)).returncode == 0
    assert _mode(nested) == 0o700

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    done = _keygen("--out", str(private))
    assert done.returncode == 0 and "warning" not in done.stderr

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o750)
    done = _keygen("--out", str(shared))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"edgenode: warning: {shared} is open to group or others (mode 0750); "
        f"the key files are 0600, but consider chmod 700 {shared}"
    ]
    assert _mode(shared) == 0o750  # left as it is, as --help says
    assert _mode(shared / "ca.pem") == _mode(shared / "cluster.pem") == 0o600
    quiet = subprocess.run(  # as deploy/install.sh runs it, into a directory it shares
        [sys.executable, "-m", "edgenode.cli", "--quiet", "keygen", "--out", str(shared),
         "--force"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == ""

    file = tmp_path / "file"
    file.write_text("")
    _refused(_keygen("--out", str(file)), "not a directory")


def test_help_documents_force_the_directory_mode_and_the_default_validity() -> None:
    text = " ".join(_keygen("--help").stdout.split())
    assert "--force" in text and "created 0700" in text and "with a warning" in text
    assert f"(default: {DEFAULT_DAYS})" in text  # the help names the default the code uses
