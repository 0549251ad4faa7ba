"""`sipfed certs`: a lab PKI (root CA -> intermediate CA -> leaves) for SIP over TLS federation.

Two certificate mistakes cost the most time in the field, so every leaf avoids both by construction:

1. A federation peer is a TLS server *and* a TLS client (mutual TLS between domains, RFC 3261
   §26.3.2.2), so every leaf carries EKU id-kp-serverAuth and id-kp-clientAuth (RFC 5280
   §4.2.1.12). A client certificate without clientAuth is refused with alert 43
   unsupported_certificate (RFC 8446 §6.2).
2. A peer must send its intermediate: the certificate_list is the leaf followed by the certificates
   that certify it (RFC 5246 §7.4.2, RFC 8446 §4.4.2). Leaves are therefore issued by an
   intermediate, and `<cn>.pem` holds leaf + intermediate, ready for `load_cert_chain`.

Files in the output directory: `ca.crt`/`ca.key` (root, the trust anchor),
`intermediate.crt`/`intermediate.key`, and per leaf `<cn>.key`, `<cn>.crt`, `<cn>.pem`.
"""

import argparse
import contextlib
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509

from proxy.admin.ca import (
    BACKDATE,
    KEY_TYPES,
    Authority,
    LeafSpec,
    PrivateKey,
    build_leaf,
    key_pem,
    make_intermediate,
    make_root,
    new_key,
    pem,
)
from proxy.x509 import (
    EKU_BY_NAME,
    issued_by,
    key_matches,
    load_certificate,
    load_private_key,
    subject_alt_names,
    valid_at,
)

DEFAULT_IP_ADDRESSES = ("127.0.0.1",)
DEFAULT_LEAF_DAYS = 825
# RFC 5280 Appendix A: ub-common-name INTEGER ::= 64
MAX_COMMON_NAME = 64
LEAF_EKU = ("serverAuth", "clientAuth")
# RFC 1035 §2.3.1 label, with RFC 1123 §2.1's leading digit allowed.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class CertError(Exception):
    """Bad input or unusable files; `problems` lists every one found (the CLI exits with 2)."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        super().__init__("\n".join(["cannot create the lab PKI:", *(f"  - {p}" for p in problems)]))


@dataclass(frozen=True, slots=True)
class LeafFiles:
    """The three files of one leaf."""

    key: Path
    """`<stem>.key`: PEM PKCS#8 private key, unencrypted, mode 0600."""
    cert: Path
    """`<stem>.crt`: the leaf certificate alone."""
    chain: Path
    """`<stem>.pem`: leaf then intermediate, the certificate_list a TLS peer sends."""


@dataclass(frozen=True, slots=True)
class FileEvent:
    """What happened to one file, for the CLI's report."""

    action: Literal["wrote", "kept"]
    """`wrote` (created or replaced) or `kept` (existing file reused)."""
    path: Path
    """The file."""
    note: str = ""
    """Extra advice for the admin, empty when there is none."""

    def line(self) -> str:
        """One line of `sipfed certs` output."""
        return f"{self.action} {self.path}" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True, slots=True)
class LabPki:
    """The lab PKI in one directory."""

    ca_cert: Path
    """`ca.crt`: the root CA, the trust anchor to put in a CA bundle."""
    intermediate_cert: Path
    """`intermediate.crt`: issues every leaf; sent by peers inside `<cn>.pem`."""
    leaves: dict[str, LeafFiles]
    """Leaf files by common name (lower case)."""
    events: tuple[FileEvent, ...] = ()
    """Every file written or kept, in order."""


def dns_name_problem(name: str) -> str | None:
    """Why `name` is not a host name in preferred name syntax, or None when it is.

    RFC 5280 §4.2.1.6: a dNSName is in the RFC 1035 §2.3.1 preferred name syntax, as modified by
    RFC 1123 §2.1; so no wildcard, no underscore, no trailing dot, no U-label.
    """
    if not name:
        return "is empty"
    if "*" in name:
        return "is a wildcard; list every name instead"
    if not name.isascii():
        return "is not ASCII; give the IDNA A-label (xn--...)"
    if len(name) > 253:
        return "is longer than 253 characters"
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name)
        return "is an IP address; pass it with --ip"
    for label in name.split("."):
        if not label:
            return "has an empty label (leading, trailing or doubled dot)"
        if not _LABEL.fullmatch(label):
            return f"label {label!r}: 1-63 letters, digits or '-', no '-' at either end"
    if name.rsplit(".", 1)[-1].isdigit():
        return "ends in an all-numeric label"
    return None


def _name_problems(names: Sequence[Sequence[str]]) -> list[str]:
    """Problems with the `--name` groups: bad DNS names, over-long or repeated CNs."""
    problems: list[str] = []
    seen_cns: set[str] = set()
    for group in names:
        if not group:
            problems.append("--name: empty value")
            continue
        for name in group:
            if (why := dns_name_problem(name)) is not None:
                problems.append(f"--name {name!r}: {why}")
        cn = group[0].lower()
        if len(cn) > MAX_COMMON_NAME:
            problems.append(f"--name {cn!r}: a CN has at most {MAX_COMMON_NAME} characters")
        if cn in seen_cns:
            problems.append(f"--name {cn!r}: given twice as the first name")
        seen_cns.add(cn)
    return problems


def _request_problems(
    names: Sequence[Sequence[str]],
    ip_addresses: Sequence[str],
    days: int,
    key_type: str,
    eku: Sequence[str] = (),
    file_stem: str | None = None,
) -> list[str]:
    """Every problem with a leaf request, so the admin fixes them in one go."""
    problems = _name_problems(names)
    for address in ip_addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            problems.append(f"--ip {address!r}: not an IPv4 or IPv6 address (without zone)")
    if days < 1:
        problems.append(f"--days {days}: must be at least 1")
    if key_type not in KEY_TYPES:
        problems.append(f"--key-type {key_type!r}: must be one of {', '.join(KEY_TYPES)}")
    known = ", ".join(EKU_BY_NAME)
    problems += [f"eku {u!r}: must be one of {known}" for u in eku if u not in EKU_BY_NAME]
    if file_stem is not None and (not file_stem or "/" in file_stem or file_stem[0] == "."):
        problems.append(f"file_stem {file_stem!r}: must be a plain file name")
    return problems


def parse_name_spec(value: str) -> tuple[str, ...]:
    """Split a `--name` value 'fqdn,alt1,alt2' into names; the first becomes the CN."""
    return tuple(part.strip() for part in value.split(","))


def _normalize(names: Sequence[str]) -> tuple[str, ...]:
    """Lower case (DNS names compare case-insensitively, RFC 4343), duplicates dropped."""
    return tuple(dict.fromkeys(name.lower() for name in names))


def _utc(moment: datetime | None) -> datetime:
    """`moment` as an aware UTC datetime; the current time when None (the CLI edge)."""
    if moment is None:
        return datetime.now(UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write to a temporary file in the same directory, then rename: no half-written key or cert."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _leaf_files(out_dir: Path, stem: str) -> LeafFiles:
    return LeafFiles(key=out_dir / f"{stem}.key", cert=out_dir / f"{stem}.crt", chain=out_dir / f"{stem}.pem")


def _write_leaf(files: LeafFiles, spec: LeafSpec, key_type: str, issuer: Authority) -> list[FileEvent]:
    """New key and leaf; key (0600) first, then the leaf, then the chain: leaf + intermediate."""
    key = new_key(key_type)
    cert = build_leaf(spec, key, issuer)
    _write_atomic(files.key, key_pem(key), 0o600)
    _write_atomic(files.cert, pem(cert), 0o644)
    _write_atomic(files.chain, pem(cert) + pem(issuer.cert), 0o644)
    return [FileEvent("wrote", path) for path in (files.key, files.cert, files.chain)]


def _write_authority(cert_path: Path, key_path: Path, authority: Authority) -> list[FileEvent]:
    _write_atomic(key_path, key_pem(authority.key), 0o600)
    _write_atomic(cert_path, pem(authority.cert), 0o644)
    return [FileEvent("wrote", key_path), FileEvent("wrote", cert_path)]


def _load_authority(cert_path: Path, key_path: Path, now: datetime) -> Authority | None:
    """The CA in `cert_path`/`key_path`, None when neither exists; it must be valid at `now`."""
    exists = cert_path.exists(), key_path.exists()
    if not any(exists):
        return None
    if not all(exists):
        have, missing = (cert_path, key_path) if exists[0] else (key_path, cert_path)
        raise CertError(
            f"{missing} is missing but {have} exists: restore it, "
            "or remove both to create a new CA (and reissue every leaf)"
        )
    try:
        cert = load_certificate(cert_path)
        key = load_private_key(key_path)
    except (ValueError, TypeError) as exc:
        raise CertError(f"{cert_path} / {key_path}: cannot load: {exc}") from exc
    if not isinstance(key, PrivateKey) or not key_matches(key, cert):
        raise CertError(f"{key_path} is not the private key of {cert_path}")
    if not valid_at(cert, now):
        raise CertError(
            f"{cert_path} is not valid now ({cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}): remove it and {key_path.name} for a new CA"
        )
    return Authority(cert, key)


def _ensure_authorities(out_dir: Path, key_type: str, now: datetime, events: list[FileEvent]) -> Authority:
    """Reuse the root and intermediate in `out_dir`, creating whichever is absent."""
    ca_paths = out_dir / "ca.crt", out_dir / "ca.key"
    int_paths = out_dir / "intermediate.crt", out_dir / "intermediate.key"
    root = _load_authority(*ca_paths, now)
    if root is None:
        root = make_root(key_type, now)
        events += _write_authority(*ca_paths, root)
    else:
        events += [FileEvent("kept", path) for path in ca_paths]
    intermediate = _load_authority(*int_paths, now)
    if intermediate is None:
        intermediate = make_intermediate(root, key_type, now)
        events += _write_authority(*int_paths, intermediate)
    elif issued_by(intermediate.cert, root.cert):
        events += [FileEvent("kept", path) for path in int_paths]
    else:
        raise CertError(
            f"{int_paths[0]} was not issued by {ca_paths[0]}: remove it and "
            f"{int_paths[1].name} to issue a new intermediate"
        )
    return intermediate


def _existing_leaf(files: LeafFiles, issuer: x509.Certificate) -> x509.Certificate | None:
    """The leaf in `files` if all three files exist and it was issued by `issuer`."""
    if not all(path.exists() for path in (files.key, files.cert, files.chain)):
        return None
    try:
        cert = load_certificate(files.cert)
    except ValueError:
        return None
    return cert if issued_by(cert, issuer) else None


def _kept_events(files: LeafFiles, cert: x509.Certificate, spec: LeafSpec) -> list[FileEvent]:
    wanted = {*spec.names, *(str(ipaddress.ip_address(a)) for a in spec.ip_addresses)}
    note = "" if subject_alt_names(cert) == wanted else "names differ; --force to reissue"
    return [FileEvent("kept", path, note) for path in (files.key, files.cert, files.chain)]


def issue_leaf(
    out_dir: Path,
    names: Sequence[str],
    *,
    ip_addresses: Sequence[str] = DEFAULT_IP_ADDRESSES,
    days: int = DEFAULT_LEAF_DAYS,
    key_type: str = "rsa",
    now: datetime | None = None,
    eku: Sequence[str] = LEAF_EKU,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    file_stem: str | None = None,
) -> LeafFiles:
    """Issue one leaf from the intermediate already in `out_dir`, replacing any same-named files.

    The eku, validity and file_stem knobs let tests make deliberately broken certificates (no
    clientAuth, expired, wrong name) under another file name. eku=() omits the extension.
    Without `not_after` the leaf ends after `days`, or with the intermediate if that is sooner.
    """
    problems = _request_problems([names], ip_addresses, days, key_type, eku, file_stem)
    if problems:
        raise CertError(*problems)
    moment = _utc(now)
    intermediate = _load_authority(out_dir / "intermediate.crt", out_dir / "intermediate.key", moment)
    if intermediate is None:
        raise CertError(f"{out_dir}: no intermediate CA; create the lab PKI first")
    end = min(moment + timedelta(days=days), intermediate.cert.not_valid_after_utc)
    spec = LeafSpec(
        _normalize(names),
        tuple(ip_addresses),
        tuple(eku),
        moment - BACKDATE if not_before is None else _utc(not_before),
        end if not_after is None else _utc(not_after),
    )
    if spec.not_after <= spec.not_before:
        raise CertError(f"not_after {spec.not_after} is not after not_before {spec.not_before}")
    files = _leaf_files(out_dir, file_stem or spec.names[0])
    _write_leaf(files, spec, key_type, intermediate)
    return files


def make_lab_pki(
    out_dir: Path,
    names: Sequence[Sequence[str]],
    *,
    ip_addresses: Sequence[str] = DEFAULT_IP_ADDRESSES,
    days: int = DEFAULT_LEAF_DAYS,
    key_type: str = "rsa",
    force: bool = False,
    now: datetime | None = None,
) -> LabPki:
    """Create (or complete) the lab PKI in `out_dir`: root, intermediate, one leaf per name group.

    The root (`ca.crt`, 10 years, cA TRUE critical, keyCertSign+cRLSign) and the intermediate
    (pathLenConstraint 0) are reused when present, so leaves added later share the trust anchor.
    Each leaf: CN = its first name, dNSName SANs for all names, iPAddress SANs for
    `ip_addresses`, EKU serverAuth+clientAuth, keyUsage critical, cA FALSE, AKI/SKI (RFC 5280
    §4.2.1). A leaf whose three files exist and chain to the intermediate is kept unless `force`.
    Raises CertError for bad input or unusable CA files, OSError when a file cannot be written.
    """
    problems = _request_problems(names, ip_addresses, days, key_type)
    if problems:
        raise CertError(*problems)
    moment = _utc(now)
    out_dir.mkdir(parents=True, exist_ok=True)
    events: list[FileEvent] = []
    intermediate = _ensure_authorities(out_dir, key_type, moment, events)
    leaves: dict[str, LeafFiles] = {}
    end = min(moment + timedelta(days=days), intermediate.cert.not_valid_after_utc)
    for group in names:
        spec = LeafSpec(_normalize(group), tuple(ip_addresses), LEAF_EKU, moment - BACKDATE, end)
        files = leaves[spec.names[0]] = _leaf_files(out_dir, spec.names[0])
        existing = None if force else _existing_leaf(files, intermediate.cert)
        if existing is None:
            events += _write_leaf(files, spec, key_type, intermediate)
        else:
            events += _kept_events(files, existing, spec)
    return LabPki(
        ca_cert=out_dir / "ca.crt",
        intermediate_cert=out_dir / "intermediate.crt",
        leaves=leaves,
        events=tuple(events),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `sipfed certs`."""
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="directory for the PKI files (created if missing)",
    )
    parser.add_argument(
        "--name",
        required=True,
        action="append",
        metavar="FQDN[,ALT...]",
        help="one leaf per --name: the first name is the CN, all are DNS SANs",
    )
    parser.add_argument(
        "--ip",
        action="append",
        metavar="ADDR",
        help="IP SAN added to every leaf, repeatable (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=DEFAULT_LEAF_DAYS,
        help=f"leaf validity in days (default: {DEFAULT_LEAF_DAYS})",
    )
    parser.add_argument(
        "--key-type",
        choices=KEY_TYPES,
        default="rsa",
        help="rsa = RSA-2048, ec = ECDSA P-256 (default: rsa)",
    )
    parser.add_argument("--force", action="store_true", help="reissue leaves that already exist")


def run(args: argparse.Namespace) -> int:
    """Create the PKI, print one line per file written or kept; 0 on success, 2 on bad input."""
    out_dir = Path(args.out)
    try:
        pki = make_lab_pki(
            out_dir,
            [parse_name_spec(value) for value in args.name],
            ip_addresses=args.ip or DEFAULT_IP_ADDRESSES,
            days=args.days,
            key_type=args.key_type,
            force=args.force,
        )
    except CertError as exc:
        print(f"sipfed certs: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = exc.filename or out_dir
        print(f"sipfed certs: cannot write {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for event in pki.events:
        print(event.line())
    return 0
