"""`edgenode keygen`: a cluster CA and member credentials on disk (argv: edgenode.cli)."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

from edgenode._cli_common import EXIT_OK, say
from edgenode.errors import ConfigError, EdgenodeError, UsageError

__all__ = ["CA_FILE", "MAX_DAYS", "MEMBER_FILE", "OUT_MODE", "cmd_keygen"]

CA_FILE = "ca.pem"
MEMBER_FILE = "cluster.pem"
OUT_MODE = 0o700  # the output directory: its owner only
# Past this, certificate dates overflow long before they mean anything (100 years).
MAX_DAYS = 36_525


def cmd_keygen(args: argparse.Namespace) -> int:
    """Create a cluster (OUT/ca.pem, OUT/cluster.pem), or one more member with --ca."""
    from edgenode.security import DEFAULT_DAYS, issue_member, new_cluster

    days = DEFAULT_DAYS if args.days is None else args.days
    if not 1 <= days <= MAX_DAYS:
        raise UsageError(f"--days must be between 1 and {MAX_DAYS}, got {days}")
    out = Path(args.out)
    ca_target, member_target = out / CA_FILE, out / MEMBER_FILE
    targets = [member_target] if args.ca else [ca_target, member_target]
    if not args.force:
        for target in targets:
            if target.exists() or target.is_symlink():
                raise UsageError(f"{target} exists: refusing to overwrite it without --force")
    if args.ca:
        try:
            ca = Path(args.ca).read_bytes()
        except OSError as exc:
            raise UsageError(f"--ca {args.ca}: {exc.strerror or exc}") from None
        try:
            member = issue_member(ca, days=days, member=args.member)
        except ConfigError as exc:
            raise UsageError(f"--ca {args.ca}: {exc}") from None
        _make_out(args, out)
        _write(member_target, member.bundle())
    else:
        ca, member = new_cluster(args.cluster, days=days)
        _make_out(args, out)
        _write(ca_target, ca)
        say(args, f"wrote {ca_target}: the cluster CA; keep it off the devices")
        _write(member_target, member.bundle())
    say(args, f"wrote {member_target}: copy it to every node and set security.key to its path")
    print(member_target)
    return EXIT_OK


def _make_out(args: argparse.Namespace, out: Path) -> None:
    """Create ``out`` with OUT_MODE; warn (and leave it) when it exists open to others."""
    try:
        out.mkdir(mode=OUT_MODE, parents=True)
        out.chmod(OUT_MODE)  # exactly, whatever the umask
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise UsageError(f"--out {out}: {exc.strerror or exc}") from None
    if not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    # Left as it is: the directory may be shared on purpose (deploy/install.sh writes
    # into /etc/edgenode, which the service user reads), and the key files are 0600.
    mode = stat.S_IMODE(out.stat().st_mode)
    if mode & 0o077:
        say(args, f"warning: {out} is open to group or others (mode {mode:04o}); the key "
                  f"files are 0600, but consider chmod {OUT_MODE:o} {out}")  # fmt: skip


def _write(path: Path, data: bytes) -> None:
    from edgenode.security import write_private

    try:
        write_private(path, data)
    except OSError as exc:
        raise EdgenodeError(f"cannot write {path}: {exc.strerror or exc}") from None
