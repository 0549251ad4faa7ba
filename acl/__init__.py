"""Trust: certificate subjects, the trusted-peer table, digest authentication and its exemptions.

A leaf package: it never imports ``proxy``.
"""
