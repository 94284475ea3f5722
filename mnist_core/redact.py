"""Credentials out of what is logged, published or written beside a model."""

import urllib.parse


def redact_url(url: str) -> str:
    """`url` without any user:password part, for logs, messages and model cards."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
