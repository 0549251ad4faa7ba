"""Sans-IO proxy decisions (RFC 3261 §16): validation, route processing, forwarding, Record-Route."""
