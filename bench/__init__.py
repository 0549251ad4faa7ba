"""``make bench``: sipfed against Kamailio under the same SIPp load (see bench/README.md)."""
