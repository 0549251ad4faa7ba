"""The admin tools, apart from the running proxy: ``sipfed certs`` and ``sipfed doctor``."""
