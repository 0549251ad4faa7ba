"""The admin tools, apart from the running proxy: ``sipfed certs`` and ``sipfed doctor``.

- ``certs`` (the command and its files) over ``ca`` (what goes into each certificate);
- ``doctor`` (the command and the offline checks) over ``live`` (probes of each route: ``live_certs``,
  ``live_sip``, ``live_failures``) and ``state`` (the running sipfed's metrics);
- ``xmpp_checks`` (offline) and ``live_xmpp`` + ``live_xmpp_dns`` + ``live_xmpp_offers`` (``--live``): the
  XMPP federation's settings, certificate names, SRV records, and each partner's stream features;
- ``findings``: the ``Finding`` every doctor report is made of;
- reading certificates: ``proxy.x509``, shared with the running proxy's own start-up checks.

They build TLS contexts only through ``proxy.net.tls``, as the proxy does. Nothing of the running proxy
imports this package; ``proxy.cli`` alone does.
"""
