# sipfed: `make run` starts the proxy on the lab config, `make test` runs every test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
LAB_CERTS := examples/certs

.PHONY: run test unit integration lint system-deps certs clean fuzz soak bench bench-workers lab fast test-compiled

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,fast]'
	touch $(STAMP)

# The lab PKI: one CA, an intermediate, and a leaf (serverAuth + clientAuth, chain beside it) per name.
$(LAB_CERTS)/ca.crt: | $(STAMP)
	$(PY) -m proxy certs --out $(LAB_CERTS) --name sipfed.tomt.local,sipfed.tomt.it \
	    --name cups.tomt.local --name lync01.tomt.it --ip 127.0.0.1 --ip 127.0.0.2 --ip 127.0.0.3

certs: $(LAB_CERTS)/ca.crt

# The SIP core compiled with mypyc into build/mypyc (tools/mypyc_build.py; ~1 min, then only when a source
# changes). The checkout stays pure Python; `make run` and `make bench` use the compiled tree when it builds.
FAST := build/mypyc
fast: $(STAMP)
	$(PY) tools/mypyc_build.py --out $(FAST)

run: $(STAMP) $(LAB_CERTS)/ca.crt
	@if $(PY) tools/mypyc_build.py --out $(FAST); then \
	    echo "make run: the compiled SIP core ($(FAST))"; \
	    PYTHONPATH=$(FAST) exec $(PY) -P -m proxy run --config examples/lab.toml; \
	else \
	    echo "make run: the pure-Python SIP core"; \
	    exec $(PY) -m proxy run --config examples/lab.toml; \
	fi

# SIPp (sip-tester), stunnel4, Kamailio, baresip and Prometheus are the independent peers of the tests and the lab;
# systemd (systemd-analyze verify) and curl check examples/sipfed.service and the health endpoints;
# sngrep is the HEP receiver of [hep]'s test; Prosody (with lua-unbound) and dnsmasq are the XMPP domain and its
# lab DNS of the XMPP federation tests.
DEBS := iproute2 sip-tester stunnel4 kamailio kamailio-tls-modules kamailio-presence-modules baresip-core prometheus systemd curl \
	sngrep prosody lua-unbound dnsmasq-base
system-deps:
	@command -v sipp >/dev/null && command -v stunnel4 >/dev/null && command -v kamailio >/dev/null \
	    && command -v prometheus >/dev/null && command -v baresip >/dev/null \
	    && command -v systemd-analyze >/dev/null && command -v curl >/dev/null && command -v sngrep >/dev/null && command -v ss >/dev/null \
	    && command -v prosody >/dev/null && command -v dnsmasq >/dev/null && ls /usr/lib/*/lua/5.4/lunbound.so >/dev/null 2>&1 \
	    && ls /usr/lib/*/kamailio/modules/tls.so /usr/lib/*/kamailio/modules/presence.so >/dev/null 2>&1 || { \
	    $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEBS); }

# Every test on the pure-Python package, then the compiled core (make test-compiled).
test: $(STAMP) system-deps
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-compiled

# The compiled core (build/mypyc) under the same unit tests (test_bridge.py puts a stand-in where the compiled
# driver takes only a real Proxy) and the real process built from it relaying with SIPp, Kamailio and Prosody and under
# every attack on its input: malformed and torture messages, floods over TCP and UDP, connection and digest attacks.
COMPILED_TESTS ?= tests/integration/test_core_build.py tests/integration/test_sipp.py \
    tests/integration/test_lab_federation.py tests/integration/test_xmpp_federation.py tests/integration/test_udp_buffer.py \
    tests/integration/test_attacks_relay.py tests/integration/test_attacks_input.py \
    tests/integration/test_attacks_connections.py tests/integration/test_attacks_digest.py \
    tests/integration/test_hardening.py tests/integration/test_rfc4475.py tests/integration/test_workers.py
test-compiled: fast system-deps
	PYTHONPATH=$(FAST):. $(PY) -P -m pytest -q --import-mode=append -p no:cacheprovider tests/unit \
	    --ignore=tests/unit/test_bridge.py
	SIPFED_COMPILED=$(CURDIR)/$(FAST) $(PY) -m pytest -q $(COMPILED_TESTS)

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP) system-deps
	$(PY) -m pytest -q tests/integration

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The two-domain lab (Kamailio on both sides, baresip users); Ctrl-C stops it. LAB_ARGS=--once exits after the scenarios.
lab: $(STAMP) system-deps
	$(PY) examples/lab/run.py --python $(PY) $(LAB_ARGS)

# sipfed (compiled when it builds) against Kamailio and a bare relay (the ceiling) on the same SIPp load,
# A B C A B C, printing ratios (bench/README.md); ~11 minutes. BENCH_ARGS="--scenario message-tls" for one.
bench: $(STAMP) system-deps
	@if $(PY) tools/mypyc_build.py --out $(FAST); then $(PY) bench/run.py --sipfed-source $(CURDIR)/$(FAST) $(BENCH_ARGS); \
	else $(PY) bench/run.py $(BENCH_ARGS); fi

# Worker mode measured (bench/workers.py, ~3 min): 1 and K client connections through sipfed with 1 and 2 workers,
# Kamailio and the bare relay, in the same run.
bench-workers: $(STAMP) system-deps
	@if $(PY) tools/mypyc_build.py --out $(FAST); then $(PY) bench/workers.py --sipfed-source $(CURDIR)/$(FAST) $(BENCH_ARGS); \
	else $(PY) bench/workers.py $(BENCH_ARGS); fi

SOAK_SECONDS ?= 600
# The soak test for as long as you like (CI runs it for 60 s): mixed load, next hop restarts, no loss.
soak: $(STAMP) system-deps
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q -s tests/integration/test_soak.py --timeout=$$(( $(SOAK_SECONDS) + 120 ))

FUZZ_SECONDS ?= 60
# atheris (libFuzzer for Python) over the SIP parser and framer, seeded with the RFC 4475 messages; bounded time.
fuzz: $(STAMP)
	@$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install -q atheris || { \
	    echo "make fuzz: atheris did not install (it ships prebuilt wheels for x86_64 Linux)" >&2; exit 1; }
	$(PY) fuzz/seed_corpus.py fuzz/corpus
	@mkdir -p fuzz/artifacts
	$(PY) fuzz/fuzz_parser.py fuzz/corpus -dict=fuzz/sip.dict -max_len=16384 -max_total_time=$(FUZZ_SECONDS) \
	    -artifact_prefix=fuzz/artifacts/ -print_final_stats=1

clean:
	rm -rf $(VENV) $(LAB_CERTS) $(FAST) .pytest_cache .mypy_cache .ruff_cache
