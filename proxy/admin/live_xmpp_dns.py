"""`sipfed doctor --live` for XMPP federation, the DNS part (RFC 6120 §3.2): our ``_xmpp-server._tcp`` SRV
records as partners find them, and each partner's servers as sipfed finds them (``proxy.net.xmpp``'s rule 1:
``address``; else SRV targets in RFC 2782 order; else the domain itself on 5269), A records only, as sipfed asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket

from proxy.admin.findings import Finding, bracketed
from proxy.admin.xmpp_checks import XMPP_PORT, partner_subject, srv_record
from proxy.xmpp.policy import Partner, XmppConfig
from routes.candidates import Candidate, rfc2782_order
from routes.dns import Answer, DnsFailure, NoRecords, Query, Srv
from routes.resolver import DnsSource

_RNG = random.Random()  # RFC 2782's weighted draws need no secrecy


async def _srv(dns: DnsSource, domain: str) -> Answer | NoRecords | DnsFailure:
    try:
        return await dns.query(Query(f"_xmpp-server._tcp.{domain}", "SRV"))
    except (NoRecords, DnsFailure) as exc:
        return exc


async def _addresses(dns: DnsSource, name: str) -> list[str] | NoRecords | DnsFailure:
    """A records, as sipfed's XMPP edge asks (``proxy.net.xmpp``); an IP address is itself."""
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(name))]
    try:
        answer = await dns.query(Query(name, "A"))
    except (NoRecords, DnsFailure) as exc:
        return exc
    return [record for record in answer.records if isinstance(record, str)]


def _records(answer: Answer) -> list[Srv]:
    return [record for record in answer.records if isinstance(record, Srv)]


async def our_records(xmpp: XmppConfig, fqdn: str, dns: DnsSource) -> list[Finding]:
    """Every domain of ours has an SRV record naming our port and an address we listen on; a missing record's
    fix names the target the others use (else ``fqdn``, the proxy's name)."""
    domains = xmpp.domains
    answers = await asyncio.gather(*(_srv(dns, domain) for domain in domains))
    targets = [r.target for a in answers if isinstance(a, Answer) for r in _records(a) if r.target != "."]
    target = targets[0] if targets else fqdn
    port = xmpp.listen[1] or XMPP_PORT
    findings: list[Finding] = []
    for domain, answer in zip(domains, answers, strict=True):
        subject, owner = f"xmpp domain {domain}", f"_xmpp-server._tcp.{domain}"
        if isinstance(answer, NoRecords):
            findings.append(
                Finding(
                    "error",
                    "live.xmpp.dns",
                    subject,
                    f"no SRV record {owner}: partners cannot find sipfed for {domain} (they fall back to {domain} "
                    f"itself on port {XMPP_PORT}, RFC 6120 §3.2.2, which is rarely sipfed)",
                    f"publish: {srv_record(domain, target, port)}",
                )
            )
        elif isinstance(answer, DnsFailure):
            findings.append(_dns_failure(subject, answer))
        else:
            for record in _records(answer):
                findings.append(await _our_target(xmpp.listen, target, dns, owner, record))
    return findings


def _dns_failure(subject: str, failure: DnsFailure) -> Finding:
    return Finding(
        "error",
        "live.xmpp.dns",
        subject,
        f"DNS gives no answer for {failure.query}: {failure.reason}",
        "check [dns] nameservers and port (or this host's resolver), and that the zone is served",
    )


async def _our_target(listen: tuple[str, int], suggested: str, dns: DnsSource, owner: str, record: Srv) -> Finding:
    """One SRV record of ours: it names our port, and its target's address is one sipfed listens on;
    ``suggested`` is the target a replacement record would name."""
    host, port = listen
    shown = f"{owner} -> {record.target}:{record.port}"
    domain = owner.removeprefix("_xmpp-server._tcp.")
    subject = f"xmpp domain {domain}"
    if record.target == ".":
        return Finding(
            "error",
            "live.xmpp.dns",
            subject,
            f"{owner} says 'no XMPP service here' (target '.')",
            f"publish instead: {srv_record(domain, suggested, port or XMPP_PORT)}",
        )
    if port and record.port != port:
        return Finding(
            "error",
            "live.xmpp.dns",
            subject,
            f"{shown}: port {record.port}, but sipfed listens on {port} ([xmpp] listen)",
            f"publish: {srv_record(domain, record.target, port)} (or set [xmpp] listen to port {record.port})",
        )
    found = await _addresses(dns, record.target)
    if isinstance(found, NoRecords | DnsFailure) or not found:
        return Finding(
            "error",
            "live.xmpp.dns",
            subject,
            f"{shown}: {record.target} has no address (A) record",
            f"publish an A record for {record.target} with the address sipfed listens on",
        )
    addresses, bound = ", ".join(found), await _bound(host)
    if any(_is_local(address) if bound is None else address in bound for address in found):
        return Finding("ok", "live.xmpp.dns", subject, f"{shown} ({addresses}): an address sipfed listens on")
    if any(_is_local(address) for address in found):
        return Finding(
            "error",
            "live.xmpp.dns",
            subject,
            f"{shown} ({addresses}): an address of this host, but sipfed listens on {host} only",
            f"point the A record of {record.target} at {host}, or set [xmpp] listen to that address",
        )
    return Finding(
        "warning",
        "live.xmpp.dns",
        subject,
        f"{shown} ({addresses}): not an address of this host; partners reach sipfed there only if a NAT or "
        f"load balancer forwards {record.port} to {bracketed(host)}:{port}",
        f"check that forwarding, or point the A record of {record.target} at this host",
    )


async def _bound(host: str) -> set[str] | None:
    """The addresses ``[xmpp] listen`` binds: None for all of this host's (a wildcard); the address; or what
    the system resolver gives for a name (as asyncio's ``create_server`` asks it)."""
    if host in ("0.0.0.0", "::"):
        return None
    with contextlib.suppress(ValueError):
        return {str(ipaddress.ip_address(host))}
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {str(info[4][0]) for info in infos}


def _is_local(address: str) -> bool:
    """An address this host has: one a socket can bind to."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
    except OSError:
        return False
    return True


async def partner_targets(partner: Partner, dns: DnsSource) -> tuple[list[tuple[str, int]], list[Finding]]:
    """The partner's servers, as ``proxy.net.xmpp`` finds them: ``address``; else SRV targets in RFC 2782 order;
    else (no SRV record) the domain itself on 5269. With the DNS findings of every domain of the partner."""
    subject = partner_subject(partner)
    if partner.address is not None:
        host, port = partner.address
        found = await _addresses(dns, host)
        if isinstance(found, NoRecords | DnsFailure) or not found:
            return [], [
                Finding(
                    "error",
                    "live.xmpp.dns",
                    subject,
                    f"its address {host!r} has no A record",
                    "set address to the partner server's IP address or a name that resolves",
                )
            ]
        shown = f"address = {bracketed(host)}:{port} in its [[xmpp.partners]] entry"
        return [(address, port) for address in found], [
            Finding("ok", "live.xmpp.dns", subject, f"{shown}, not DNS, says where it is ({', '.join(found)})")
        ]
    targets: list[tuple[str, int]] = []
    findings = []
    for domain in partner.domains:
        servers, finding = await _partner_domain(domain, subject, dns)
        findings.append(finding)
        if domain == partner.primary_domain:
            targets = servers
    return targets, findings


async def _partner_domain(domain: str, subject: str, dns: DnsSource) -> tuple[list[tuple[str, int]], Finding]:
    owner = f"_xmpp-server._tcp.{domain}"
    answer = await _srv(dns, domain)
    if isinstance(answer, DnsFailure):
        return [], _dns_failure(subject, answer)
    if isinstance(answer, NoRecords):
        found = await _addresses(dns, domain)
        if isinstance(found, NoRecords | DnsFailure) or not found:
            return [], Finding(
                "error",
                "live.xmpp.dns",
                subject,
                f"no server found for {domain}: no SRV record {owner} and no A record for {domain}",
                f"check the domain name; ask the partner to publish {owner} (port 5269), or set address = "
                '"host:5269" in its [[xmpp.partners]] entry',
            )
        return [(address, XMPP_PORT) for address in found], Finding(
            "warning",
            "live.xmpp.dns",
            subject,
            f"no SRV record {owner}: sipfed falls back to {domain} itself on port {XMPP_PORT} "
            f"({', '.join(found)}), RFC 6120 §3.2.2",
            f"ask the partner to publish {owner}, or set address in its [[xmpp.partners]] entry",
        )
    records = [r for r in _records(answer) if r.target not in (".", "")]
    ordered = rfc2782_order([Candidate(r.target, r.port, "tcp", domain, r.priority, r.weight) for r in records], _RNG)
    servers: list[tuple[str, int]] = []
    shown = []
    for candidate in ordered:
        found = await _addresses(dns, candidate.host)
        addresses = found if isinstance(found, list) else []
        servers += [(address, candidate.port) for address in addresses]
        shown.append(f"{candidate.host}:{candidate.port} ({', '.join(addresses) or 'no A record'})")
    if not servers:
        return [], Finding(
            "error",
            "live.xmpp.dns",
            subject,
            f"{owner} names no server with an address: {', '.join(shown) or 'no target'}",
            "ask the partner to fix its SRV record or the A records of its targets",
        )
    return servers, Finding("ok", "live.xmpp.dns", subject, f"{owner} -> {', '.join(shown)}")
