"""Registry addresses: how references name a registry, and the URL connected to."""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
import urllib.request

from tools.registry.client.errors import RegistryError
from tools.registry.client.names import HOSTNAME_PATTERN, LOOPBACK_HOSTS


@dataclasses.dataclass(frozen=True)
class RegistryAddress:
    """`name` is how references spell the registry; `endpoint` is the URL connected to."""

    name: str
    endpoint: str

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.endpoint).hostname or ""


def _check_host_port(text: str, what: str) -> tuple[str, int | None]:
    fix = "use HOST, HOST:PORT or http(s)://HOST[:PORT], e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    split = urllib.parse.urlsplit("//" + text)
    try:
        host, port = split.hostname, split.port
    except ValueError:
        raise RegistryError(f"{what} {text!r} has an invalid port; {fix}") from None
    if (
        not host
        or split.path
        or split.query
        or split.fragment
        or split.username
        or split.password
    ):
        raise RegistryError(f"{what} {text!r} is malformed; {fix}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOSTNAME_PATTERN.match(host):
            raise RegistryError(
                f"{what} {text!r} has an invalid host name {host!r}; {fix}"
            ) from None
    return host, port


def parse_registry(
    text: str, endpoint: str | None = None, plain_http: bool | None = None
) -> RegistryAddress:
    """Parses `HOST[:PORT]` or `http(s)://HOST[:PORT]`.

    Loopback registries default to http://, everything else to https://; `plain_http`
    forces one or the other. `endpoint` connects somewhere else (a proxy, a test
    server) while auth and references still use the registry's own name.
    """
    raw = (text or "").strip()
    if not raw:
        raise RegistryError(
            "the registry is empty; pass --registry HOST[:PORT] (or set it in the push config)"
        )
    scheme = None
    if "://" in raw:
        scheme, _, raw = raw.partition("://")
        if scheme not in ("http", "https"):
            raise RegistryError(
                f"registry {text!r} has scheme {scheme!r}; only http:// and https:// are supported"
            )
        raw = raw.rstrip("/")
    host, port = _check_host_port(raw, "registry")
    name = raw.lower()
    if scheme is None:
        if plain_http is None:
            plain_http = host in LOOPBACK_HOSTS
        scheme = "http" if plain_http else "https"
    if endpoint:
        if "://" not in endpoint:
            raise RegistryError(
                f"registry endpoint {endpoint!r} must be a URL such as http://127.0.0.1:5000"
            )
        endpoint_scheme, _, endpoint_rest = endpoint.partition("://")
        if endpoint_scheme not in ("http", "https"):
            raise RegistryError(
                f"registry endpoint {endpoint!r} must start with http:// or https://"
            )
        _check_host_port(endpoint_rest.rstrip("/"), "registry endpoint")
        return RegistryAddress(name=name, endpoint=endpoint.rstrip("/"))
    netloc = f"[{host}]" if ":" in host else host
    if port:
        netloc += f":{port}"
    return RegistryAddress(name=name, endpoint=f"{scheme}://{netloc}")
