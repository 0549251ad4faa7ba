-- Prosody 0.12 (Debian bookworm) as one XMPP domain of the integration tests, on loopback.
-- A string.Template: tests/integration/xmpp_lab.py fills in its placeholders as Lua literals.
-- Every path derives from the lab directory in the environment variable LAB (a 0.12 config reads it as ENV_LAB),
-- which must be set for prosody and prosodyctl alike; it holds certs/, trust/, data/, run/ and the log.
local LAB = ENV_LAB or error("environment variable LAB is not set")

-- Containers run as root; without this mod_posix refuses to start and 0.12.3 then hangs instead of exiting.
-- It also keeps prosodyctl from switching to the prosody user, who could not read the lab directory.
run_as_root = true
-- No 'daemonize' (deprecated in 0.12): the harness passes -F.
pidfile = LAB .. "/run/prosody.pid"
data_path = LAB .. "/data"

admins = { }
modules_enabled = { ${modules} }
-- mod_c2s, mod_s2s, mod_s2s_auth_certs, mod_message, mod_presence, mod_iq and mod_offline load by themselves.

interfaces = { ${address} }
c2s_interfaces = { ${address} }
s2s_interfaces = { ${address} }
local_interfaces = { ${address} }
c2s_ports = { ${c2s_port} }
s2s_ports = { ${s2s_port} }
use_ipv6 = false -- no AAAA lookups for s2s peers

authentication = "internal_plain"
allow_registration = false
c2s_require_encryption = true
s2s_require_encryption = ${s2s_require_encryption}
s2s_secure_auth = ${s2s_secure_auth}
s2s_timeout = ${s2s_timeout} -- seconds; Prosody's default is 90
${network}

-- The host certificate is found as certs/<domain>.crt (leaf and intermediate) with certs/<domain>.key.
-- cafile is the trust anchor for s2s peers' certificates; it lives apart from certs/, which Prosody indexes.
certificates = LAB .. "/certs"
ssl = { cafile = LAB .. "/trust/cafile.pem" }

-- s2s peers are resolved with lua-unbound (net.unbound replaces net.adns when it is installed).
${unbound}

log = {
  { levels = { min = "debug" }, to = "file", filename = LAB .. "/prosody.log" };
  { levels = { min = "error" }, to = "console" };
}

VirtualHost ${domain}
