"""load_config: a typed Config from TOML, or one ConfigError listing every problem by key path."""

import shutil
from pathlib import Path

import pytest

from proxy.admin.certs import make_lab_pki
from proxy.config import Config, ConfigError, load_config
from tests.unit.config_files import write_config

REPO = Path(__file__).resolve().parents[2]

TLS = """
[tls]
cert_chain = "certs/proxy.pem"
key = "certs/proxy.key"
ca_bundle = "certs/ca.crt"
"""

GOOD = (
    """
[proxy]
fqdn = "sipfed.tomt.local"
federation_fqdn = "fed.tomt.local"
tolerated_option_tags = ["MS-BENotify"]
transaction_timeout_seconds = 10
max_message_bytes = 32768
log_level = "DEBUG"
"""
    + TLS
    + """
[[listeners]]
name = "cisco"
address = "127.0.0.1"
port = 5061

[[listeners]]
name = "lync"
address = "127.0.0.1"
port = 5062
fqdn = "sipfed.tomt.it"

[[listeners]]
name = "plain"
transport = "udp"
address = "127.0.0.1"
port = 5060

[[routes]]
match_uri = "tomt.local"
destination = "127.0.0.2"
port = 5062
tls_name = "cups.tomt.local"
listener = "cisco"

[[routes]]
match_uri = "*.tomt.it"
destination = "lync01.tomt.it"
listener = "lync"

[[maddr_rewrite]]
internal = "127.0.0.2"
external = "cups.tomt.local"
"""
)


def write(tmp_path: Path, text: str, *, certs: bool = True) -> Path:
    return write_config(tmp_path, text, certs=certs)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"config error in {path}:\n")
    assert str(info.value).count("\n  - ") == len(info.value.problems)
    return info.value.problems


def test_good_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert isinstance(config, Config)
    assert (config.fqdn, config.federation_fqdn) == ("sipfed.tomt.local", "fed.tomt.local")
    assert [(lst.name, lst.transport, lst.port) for lst in config.listeners] == [
        ("cisco", "tls", 5061),
        ("lync", "tls", 5062),
        ("plain", "udp", 5060),
    ]
    cisco, lync, _ = config.listeners
    assert (cisco.fqdn, cisco.federation_fqdn) == ("sipfed.tomt.local", "fed.tomt.local")
    # a listener that names itself shows that name in maddr too, unless told otherwise
    assert (lync.fqdn, lync.federation_fqdn, lync.require_client_cert) == ("sipfed.tomt.it", "sipfed.tomt.it", True)
    assert [(r.match_uri, r.port, r.listener) for r in config.routes] == [
        ("tomt.local", 5062, "cisco"),
        ("*.tomt.it", 5061, "lync"),
    ]
    assert config.tls is not None
    assert config.tls.cert_chain == (tmp_path / "certs" / "proxy.pem").resolve()
    assert config.tls.min_version == "1.2"
    assert [(m.internal, m.external) for m in config.maddr_rewrites] == [("127.0.0.2", "cups.tomt.local")]
    assert config.tolerated_option_tags == frozenset({"ms-benotify"})
    assert config.transaction_timeout_seconds == 10.0
    assert config.invite_timeout_seconds == 180.0
    assert config.max_message_bytes == 32768
    assert config.log_level == "debug"


def test_defaults_two_tls_listeners(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[proxy]\nfqdn = "sipfed.example"\n' + TLS))
    assert [(lst.name, lst.transport, lst.port) for lst in config.listeners] == [
        ("cisco", "tls", 5061),
        ("lync", "tls", 5062),
    ]
    assert all(lst.fqdn == lst.federation_fqdn == "sipfed.example" for lst in config.listeners)
    assert config.routes == ()
    assert config.transaction_timeout_seconds == 16.0
    assert config.max_message_bytes == 65535


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("port = 5062\ntls_name", "port = 70000\ntls_name")  # routes[0].port
    text = text.replace('destination = "lync01.tomt.it"', 'destination = "lync01.tomt.it"\nport = 70000')
    text = text.replace('name = "cisco"\naddress', 'name = "cisco"\ntransport = "sctp"\naddress')
    text = text.replace('log_level = "DEBUG"', 'log_level = "DEBUG"\nflavour = "vanilla"')
    text = text.replace('cert_chain = "certs/proxy.pem"', 'cert_chain = "certs/missing.pem"')
    problems = problems_of(write(tmp_path, text))
    keys = [p.split(":")[0] for p in problems]
    assert "routes[1].port" in keys
    assert "routes[0].port" in keys
    assert "listeners[0].transport" in keys
    assert "tls.cert_chain" in keys
    assert "proxy.flavour" in keys
    assert len(problems) == 5
    missing = next(p for p in problems if p.startswith("tls.cert_chain"))
    assert "certs/missing.pem" in missing


def test_route_listener_naming_no_listener(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, GOOD.replace('listener = "lync"', 'listener = "teams"')))
    assert len(problems) == 1
    assert problems[0].startswith("routes[1].listener: no listener is named 'teams'")
    assert "cisco" in problems[0]


def test_missing_fqdn_and_tls(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "[proxy]\n", certs=False))
    keys = [p.split(":")[0] for p in problems]
    assert keys == ["proxy.fqdn", "tls"]


def test_unknown_sections_and_keys(tmp_path: Path) -> None:
    text = GOOD + "\n[telemetry]\nport = 9100\n"
    text = text.replace('internal = "127.0.0.2"', 'internal = "127.0.0.2"\nvia = "x"')
    text = text.replace('fqdn = "sipfed.tomt.it"', 'fqdn = "sipfed.tomt.it"\nbacklog = 5')
    text = text.replace('ca_bundle = "certs/ca.crt"', 'ca_bundle = "certs/ca.crt"\nverify = false')
    keys = [p.split(":")[0] for p in problems_of(write(tmp_path, text))]
    assert sorted(keys) == sorted(["telemetry", "maddr_rewrite[0].via", "listeners[1].backlog", "tls.verify"])


def test_listener_problems(tmp_path: Path) -> None:
    text = (
        '[proxy]\nfqdn = "sipfed.example"\n'
        + TLS
        + """
[[listeners]]
name = "a"
address = "sipfed.example"
port = 5061
require_client_cert = "yes"

[[listeners]]
name = "a"
address = "127.0.0.1"
port = 65536

[[listeners]]
name = "b"
address = "127.0.0.1"
port = 5061

[[listeners]]
name = "c"
address = "127.0.0.1"
port = 5061
"""
    )
    problems = problems_of(write(tmp_path, text))
    keys = [p.split(":")[0] for p in problems]
    assert "listeners[0].address" in keys
    assert "listeners[0].require_client_cert" in keys
    assert "listeners[1].name" in keys
    assert "listeners[1].port" in keys
    assert any(p.startswith("listeners: 'c' and 'b' both bind 127.0.0.1:5061") for p in problems)


def test_settings_problems(tmp_path: Path) -> None:
    text = GOOD.replace("transaction_timeout_seconds = 10", "transaction_timeout_seconds = -1")
    text = text.replace("max_message_bytes = 32768", "max_message_bytes = 10")
    text = text.replace('log_level = "DEBUG"', 'log_level = "loud"\ntolerated_option_tags = "ms-benotify"')
    text = text.replace('tolerated_option_tags = ["MS-BENotify"]\n', "")
    keys = [p.split(":")[0] for p in problems_of(write(tmp_path, text))]
    assert sorted(keys) == sorted(
        [
            "proxy.transaction_timeout_seconds",
            "proxy.max_message_bytes",
            "proxy.log_level",
            "proxy.tolerated_option_tags",
        ]
    )


def test_keepalive_and_dns_settings(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert (config.keepalive_seconds, config.keepalive_timeout_seconds) == (90.0, 10.0)  # RFC 5626 §4.4.1's 10 s
    assert (config.dns_nameservers, config.dns_port) == (None, 53)  # the system's resolvers
    text = GOOD.replace("[proxy]\n", "[proxy]\nkeepalive_seconds = 0\n") + (
        '[dns]\nnameservers = ["127.0.0.53", "::1"]\nport = 5353\ntimeout_seconds = 1.5\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.keepalive_seconds == 0.0
    assert (config.dns_nameservers, config.dns_port, config.dns_timeout_seconds) == (("127.0.0.53", "::1"), 5353, 1.5)


def test_keepalive_and_dns_problems(tmp_path: Path) -> None:
    text = GOOD.replace("[proxy]\n", "[proxy]\nkeepalive_seconds = 0.2\nkeepalive_timeout_seconds = 99\n") + (
        '[dns]\nnameservers = ["ns1.example"]\nport = 0\nretries = 3\n'
    )
    problems = problems_of(write(tmp_path, text))
    assert sorted(problems) == sorted(
        [
            "dns.nameservers: 'ns1.example' is not an IP address",
            "dns.port: 0 must be a whole number 1-65535",
            "dns.retries: unknown key (known: nameservers, port, timeout_seconds)",
            "proxy.keepalive_seconds: 0.2 must be a number of seconds from 1 to 3600 (0: off)",
            "proxy.keepalive_timeout_seconds: 99 must be a number of seconds from 0.5 to 60",
        ]
    )


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "absent.toml")[0].startswith("cannot read the file")
    bad = tmp_path / "bad.toml"
    bad.write_text("[proxy\nfqdn =")
    assert problems_of(bad)[0].startswith("not valid TOML")


def test_udp_only_config_needs_no_tls(tmp_path: Path) -> None:
    text = (
        '[proxy]\nfqdn = "sipfed.example"\n[[listeners]]\nname = "u"\ntransport = "udp"\naddress = "127.0.0.1"\n'
        '[[routes]]\nmatch_uri = "*"\ndestination = "10.0.0.1"\ntransport = "udp"\n'
    )
    config = load_config(write(tmp_path, text, certs=False))
    assert config.tls is None
    assert config.routes[0].port == 5060


def test_example_lab_config_loads(tmp_path: Path) -> None:
    shutil.copy(REPO / "examples" / "lab.toml", tmp_path / "lab.toml")
    make_lab_pki(
        tmp_path / "certs",
        [["sipfed.tomt.local", "sipfed.tomt.it"], ["cups.tomt.local"], ["lync01.tomt.it"]],
        ip_addresses=["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        key_type="ec",
    )
    config = load_config(tmp_path / "lab.toml")
    assert [(lst.name, lst.port, lst.fqdn) for lst in config.listeners] == [
        ("cisco", 5061, "sipfed.tomt.local"),
        ("lync", 5062, "sipfed.tomt.it"),
    ]
    assert {r.name: r.listener for r in config.routes} == {"cisco": "cisco", "lync": "lync"}
    assert config.tolerated_option_tags == frozenset({"ms-benotify"})
    assert [(m.internal, m.external) for m in config.maddr_rewrites] == [("127.0.0.2", "cups.tomt.local")]
    assert config.tls is not None
    assert config.tls.cert_chain == (tmp_path / "certs" / "sipfed.tomt.local.pem").resolve()


def test_example_lab_config_without_certs_names_the_files(tmp_path: Path) -> None:
    shutil.copy(REPO / "examples" / "lab.toml", tmp_path / "lab.toml")
    problems = problems_of(tmp_path / "lab.toml")
    assert [p.split(":")[0] for p in problems] == ["tls.cert_chain", "tls.key", "tls.ca_bundle"]
