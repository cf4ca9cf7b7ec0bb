"""The HTTPS entry for remote devices: proxy, TLS, pairing and device sessions."""
