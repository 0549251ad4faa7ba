#!/usr/bin/env python3
"""``make lab``: the three-domain lab on loopback, with a SIP ladder of what crossed sipfed.

    python examples/lab/run.py [--once] [--free-ports] [--workdir DIR] [--python PY]

tomt.local (a CUP stand-in) and tomt.it (a Lync pool stand-in) are Kamailio; alice@tomt.local and
bob@tomt.it are baresip; sipfed sits between the domains. The third domain, xmpp.test, is Prosody with a lab
DNS (dnsmasq: the _xmpp-server._tcp SRV records of all three domains), and romeo@xmpp.test a slixmpp client;
sipfed is the XMPP server of tomt.local and tomt.it. The lab runs three scenarios, each asserted from what
the users' own software reports, and prints the ladder sipfed's ``--trace`` recorded:

  1. presence: bob watches alice and alice watches bob; alice goes offline and online, bob sees it;
     bob goes offline, alice sees it;
  2. instant messages: bob -> alice and alice -> bob;
  3. XMPP: alice and bob see romeo come online; romeo -> alice and bob -> romeo; romeo watches bob.

Then it prints where the metrics are and waits for Ctrl-C (``--once``: exits after the scenarios,
with status 1 if one failed), and stops every process it started, by PID. The SIP side is stdlib only; the
XMPP domain is run with the tests' harness (tests/integration/xmpp_lab.py: dnsmasq, Prosody, slixmpp).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab  # beside this file; examples/ is not a package

sys.path.insert(0, str(lab.ROOT))
from tests.integration import xmpp_lab  # the XMPP domain's processes (dnsmasq, Prosody) and its user (slixmpp)

SCENARIO_SECONDS = 20


class Lab:
    """Every process of the lab, started in dependency order and stopped in reverse."""

    def __init__(self, workdir: Path, ports: lab.Ports, python: str) -> None:
        self.workdir, self.ports, self.python = workdir, ports, python
        self.children: list[lab.Child] = []
        self.trace = workdir / "sipfed.trace"
        self.users: dict[str, lab.Baresip] = {}
        self.metrics_url = ""
        self.dns: xmpp_lab.LabDns | None = None
        self.prosody: xmpp_lab.Prosody | None = None
        self.romeo: xmpp_lab.XmppUser | None = None
        self.dns_port = lab.free_port(ports.dns, both=True)

    def start_xmpp_domain(self, certs: Path) -> None:
        """xmpp.test: the lab DNS with the SRV records of all three domains, and Prosody (trusting the lab CA)."""
        p = self.ports
        records = [
            xmpp_lab.host_record("xmpp-gw.tomt.local", p.sipfed),
            xmpp_lab.host_record(lab.XMPP_DOMAIN, p.prosody),
            xmpp_lab.srv("_xmpp-server._tcp.tomt.local", "xmpp-gw.tomt.local", p.xmpp),
            xmpp_lab.srv("_xmpp-server._tcp.tomt.it", "xmpp-gw.tomt.local", p.xmpp),
            xmpp_lab.srv(f"_xmpp-server._tcp.{lab.XMPP_DOMAIN}", lab.XMPP_DOMAIN, p.prosody_s2s),
        ]
        self.dns = xmpp_lab.LabDns(p.dns, self.dns_port, records, ["tomt.local", "tomt.it", "test"])
        config = xmpp_lab.ProsodyConfig(
            cert=certs / f"{lab.XMPP_DOMAIN}.pem",
            key=certs / f"{lab.XMPP_DOMAIN}.key",
            cafile=certs / "ca.crt",
            address=p.prosody,
            c2s_port=p.prosody_c2s,
            s2s_port=p.prosody_s2s,
            dns=self.dns.forward,
        )
        self.prosody = xmpp_lab.Prosody(self.workdir, config)
        self.prosody.register("romeo", "romeo-pw")
        self.romeo = xmpp_lab.XmppUser(
            f"romeo@{lab.XMPP_DOMAIN}",
            "romeo-pw",
            address=p.prosody,
            port=p.prosody_c2s,
            cafile=certs / "ca.crt",
            auto_authorize=True,
        )

    def start(self) -> None:
        p, certs = self.ports, lab.make_certs(self.workdir / "certs", self.python)
        self.start_xmpp_domain(certs)
        for domain, host, port in (("tomt.local", p.cups, p.cups_tls), ("tomt.it", p.lync, p.lync_tls)):
            config = lab.write_kamailio(self.workdir / domain, domain, p, certs)
            kamailio = self._add(lab.Child(domain, lab.kamailio_command(config), config.parent / "kamailio.log"))
            lab.wait_listening(host, port, kamailio)
            kamailio.wait_for("lab DNS: sipfed", 10)
        xmpp = lab.xmpp_section((p.sipfed, p.xmpp), certs, store=str(self.workdir / "xmpp-subscriptions.sqlite3"))
        config = lab.write_sipfed(self.workdir / "sipfed.toml", p, certs, dns=(p.dns, self.dns_port), xmpp=xmpp)
        sipfed = self._add(
            lab.Child(
                "sipfed",
                [self.python, "-m", "proxy", "run", "--config", str(config), "--trace", str(self.trace)],
                self.workdir / "sipfed.log",
                cwd=lab.ROOT,
            )
        )
        ready = sipfed.wait_for(r"^sipfed ready .*$", 20).group(0)
        self.metrics_url = "http://" + ready.split("metrics=http:")[1].split()[0] + "/metrics"
        for user, address in (("alice", p.alice), ("bob", p.bob)):
            self.users[user] = self._add(
                lab.Baresip(
                    lab.write_baresip(self.workdir / user, user, p, xmpp_contact=f"romeo@{lab.XMPP_DOMAIN}"),
                    user,
                    address,
                    p.user_cons,
                )
            )
        for baresip in self.users.values():
            baresip.open_console()
            baresip.wait_view(r"200 OK .*\[1 binding\]", 15)  # registered with its own domain's server
        print(f"  {ready}")

    def _add(self, child: lab.Child) -> lab.Child:
        self.children.append(child)
        return child

    def stop(self) -> None:
        if self.romeo is not None:
            self.romeo.close()
        for child in reversed(self.children):
            child.stop()
        for process in (self.prosody, self.dns):
            if process is not None:
                process.stop()


def step(action: Callable[[], None], watcher: lab.Baresip, pattern: str, what: str) -> None:
    """Do ``action``, then wait (bounded) until ``watcher``'s baresip reports ``pattern``."""
    since = watcher.mark()
    action()
    line = watcher.wait_view(pattern, SCENARIO_SECONDS, since=since)
    print(f"  {what}\n      {watcher.name}'s baresip: {line}")


def presence(the_lab: Lab) -> None:
    alice, bob = the_lab.users["alice"], the_lab.users["bob"]
    for watcher, peer in ((bob, "alice@tomt.local"), (alice, "bob@tomt.it")):
        print(f"  {watcher.name} watches {peer}: {watcher.contact_presence(peer, 'Online', SCENARIO_SECONDS)}")
    step(
        lambda: alice.command("/presence_offline"),
        bob,
        r"<sip:alice@tomt.local> changed status from Online to Offline",
        "alice goes offline (PUBLISH to tomt.local)",
    )
    step(
        lambda: alice.command("/presence_online"),
        bob,
        r"<sip:alice@tomt.local> changed status from Offline to Online",
        "alice comes back (PUBLISH to tomt.local)",
    )
    step(
        lambda: bob.command("/presence_offline"),
        alice,
        r"<sip:bob@tomt.it> changed status from Online to Offline",
        "bob goes offline (PUBLISH to tomt.it)",
    )


def messages(the_lab: Lab) -> None:
    alice, bob = the_lab.users["alice"], the_lab.users["bob"]
    step(
        lambda: bob.command("/message Hello Alice, this is Bob on tomt.it"),
        alice,
        r'sip:bob@tomt.it: "Hello Alice, this is Bob on tomt.it"',
        "bob -> alice: MESSAGE",
    )
    step(
        lambda: alice.command("/message Hi Bob, Alice here on tomt.local"),
        bob,
        r'sip:alice@tomt.local: "Hi Bob, Alice here on tomt.local"',
        "alice -> bob: MESSAGE",
    )


def xmpp(the_lab: Lab) -> None:
    alice, bob, romeo = the_lab.users["alice"], the_lab.users["bob"], the_lab.romeo
    assert romeo is not None
    romeo.connect()
    print(f"  romeo@{lab.XMPP_DOMAIN} logs in to Prosody and approves alice's and bob's subscription requests")
    for watcher in (alice, bob):
        line = watcher.contact_presence(f"romeo@{lab.XMPP_DOMAIN}", "Online", SCENARIO_SECONDS)
        print(f"  {watcher.name} watches romeo@{lab.XMPP_DOMAIN}: {line}")
    step(
        lambda: romeo.send_message("alice@tomt.local", "Buongiorno Alice, Romeo da xmpp.test"),
        alice,
        rf'sip:romeo@{lab.XMPP_DOMAIN}: "Buongiorno Alice, Romeo da xmpp.test"',
        "romeo -> alice: <message type='chat'> over XMPP S2S, a MESSAGE into tomt.local",
    )
    since = bob.mark()
    bob.command("/contact_next")
    bob.wait_view(rf"Romeo <sip:romeo@{lab.XMPP_DOMAIN}>", SCENARIO_SECONDS, since=since)
    bob.command("/message Ciao Romeo, Bob da tomt.it")
    bob.command("/contact_prev")
    got = romeo.wait_for_message(lambda m: m.body == "Ciao Romeo, Bob da tomt.it", SCENARIO_SECONDS)
    print(f'  bob -> romeo: MESSAGE, then a chat stanza\n      romeo\'s client: {got.from_jid}: "{got.body}"')
    romeo.subscribe("bob@tomt.it")
    seen = romeo.wait_for_presence(lambda q: q.from_jid.startswith("bob@tomt.it/"), SCENARIO_SECONDS)
    print(
        f"  romeo subscribes to bob@tomt.it (a SUBSCRIBE through the pool's presence server)\n"
        f"      romeo's client: {seen.from_jid} {seen.type}"
    )
    step(
        lambda: romeo.set_presence(show="dnd", status="Balcony"),
        alice,
        rf"<sip:romeo@{lab.XMPP_DOMAIN}> changed status from Online to Busy",
        "romeo is busy (dnd): a NOTIFY with RPID busy",
    )


def run_scenario(the_lab: Lab, title: str, scenario: Callable[[Lab], None]) -> bool:
    print(f"\n== {title}")
    offset = the_lab.trace.stat().st_size if the_lab.trace.exists() else 0
    try:
        scenario(the_lab)
        passed = True
    except (TimeoutError, RuntimeError, AssertionError) as failure:
        print(f"  FAILED: {failure}")
        passed = False
    time.sleep(0.5)  # let the last responses reach the trace
    print("\n  What crossed sipfed (from sipfed run --trace):\n")
    hops = lab.read_trace(the_lab.trace, offset)
    lanes = {"left": "xmpp", "sides": ("xmpp.test (gateway)", "tomt.local, tomt.it"), "right": "sip"}
    for row in lab.ladder(hops, **lanes) if scenario is xmpp else lab.ladder(hops):  # type: ignore[arg-type]
        print(f"  {row}")
    return passed


def print_metrics(url: str) -> None:
    print(f"\n== Metrics: {url}")
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as failure:
        print(f"  (not reachable: {failure})")
        return
    wanted = ("sipfed_requests_relayed_total", "sipfed_subscriptions_active", "sipfed_xmpp_")
    for line in text.splitlines():
        if line.startswith(wanted) and "_created{" not in line and not line.endswith(" 0.0"):
            print(f"  {line}")


def pick_ports(free: bool) -> lab.Ports:
    if free:
        return lab.Ports.free()
    ports = lab.Ports()
    busy = ports.busy()
    if busy:
        ports = ports.instead_of(busy)
        print(f"  in use already, so taking free ports instead: {', '.join(busy)}")
    return ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="exit after the scenarios (CI)")
    parser.add_argument("--free-ports", action="store_true", help="take free ports instead of 5060-5062")
    parser.add_argument("--workdir", type=Path, help="where configs, logs and the trace go (default: a new temp dir)")
    parser.add_argument("--python", default=sys.executable, help="the Python that has sipfed installed")
    args = parser.parse_args(argv)
    for tool in ("kamailio", "baresip", "prosody", "dnsmasq"):
        if shutil.which(tool) is None:
            print(
                f"{tool} is not installed: apt-get install kamailio kamailio-tls-modules "
                "kamailio-presence-modules baresip-core prosody lua-unbound dnsmasq-base",
                file=sys.stderr,
            )
            return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sipfed-lab-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"sipfed three-domain lab, files in {workdir}")
    the_lab = Lab(workdir, pick_ports(args.free_ports), args.python)
    # Ctrl-C or SIGTERM, at any point: stop everything started so far. (Set explicitly: a shell
    # that starts us in the background without job control leaves SIGINT ignored.)
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        describe(the_lab.ports)
        the_lab.start()
        results = [
            run_scenario(the_lab, "Scenario 1: presence across the federation", presence),
            run_scenario(the_lab, "Scenario 2: instant messages", messages),
            run_scenario(the_lab, "Scenario 3: XMPP federation with xmpp.test (Prosody)", xmpp),
        ]
        print_metrics(the_lab.metrics_url)
        print(f"\nScenarios: {sum(results)} of {len(results)} passed.")
        if not args.once:
            wait_for_ctrl_c(the_lab)
        return 0 if all(results) else 1
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as failure:
        print(f"\nThe lab did not start: {failure}\nLogs are in {workdir}.", file=sys.stderr)
        return 1
    finally:
        print("Stopping the lab ...")
        the_lab.stop()


def describe(p: lab.Ports) -> None:
    print(f"""
  tomt.local  Kamailio (CUP stand-in)        users udp:{p.cups}:{p.cups_users}  federation tls:{p.cups}:{p.cups_tls}
  tomt.it     Kamailio (Lync pool stand-in)  users udp:{p.lync}:{p.lync_users}  federation tls:{p.lync}:{p.lync_tls}
  sipfed      cisco tls:{p.sipfed}:{p.cisco_listener}  lync tls:{p.sipfed}:{p.lync_listener}
  alice@tomt.local  baresip {p.alice}:{p.user_sip}    bob@tomt.it  baresip {p.bob}:{p.user_sip}
  xmpp.test   Prosody                         c2s {p.prosody}:{p.prosody_c2s}  s2s {p.prosody}:{p.prosody_s2s}
  sipfed      xmpp s2s {p.sipfed}:{p.xmpp}   lab DNS {p.dns} (dnsmasq: _xmpp-server._tcp SRV records)
""")


def interrupted(*_: object) -> None:
    raise KeyboardInterrupt


def wait_for_ctrl_c(the_lab: Lab) -> None:
    p = the_lab.ports
    for user in the_lab.users.values():
        user.close_console()
    print(f"""
Everything keeps running. Type into a user's baresip console, e.g.
  nc {p.bob} {p.user_cons}      then  /message Hello again   or  /presence_offline
  nc {p.alice} {p.user_cons}
Logs and the trace are in {the_lab.workdir}. Ctrl-C stops the lab.""")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
