"""Auth from the registry's WWW-Authenticate challenge: Basic, or Bearer tokens per scope."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

from tools.registry.client.credentials import Credentials, CredentialSource
from tools.registry.client.errors import AuthError, RegistryError
from tools.registry.client.names import USER_AGENT
from tools.registry.client.wire import (
    RETRYABLE_STATUSES,
    _error_text,
    _HTTPStatusError,
    _retry_after,
)

if TYPE_CHECKING:
    from tools.registry.client.transport import Transport as Registry


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {key.lower(): value for key, value in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


class _Auth:
    """Holds what the registry's challenge asked for and caches bearer tokens per scope."""

    def __init__(self, registry: Registry, credentials: CredentialSource):
        self._registry = registry
        self._credential_source = credentials
        self._credentials: Credentials | None = None
        self._credentials_loaded = False
        self._scheme: str | None = None
        self._params: dict[str, str] = {}
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._lock = threading.Lock()

    @property
    def credentials(self) -> Credentials | None:
        if not self._credentials_loaded:
            self._credentials = self._credential_source()
            self._credentials_loaded = True
        return self._credentials

    def header(self, scopes: tuple[str, ...]) -> str | None:
        with self._lock:
            if self._scheme == "basic":
                creds = self.credentials
                if not creds:
                    raise AuthError(
                        f"registry {self._registry.name} requires a user name and password and none were found; "
                        "log in with `docker login` or `skopeo login` (or put them in ~/.docker/config.json)"
                    )
                return (
                    "Basic "
                    + base64.b64encode(
                        f"{creds.username}:{creds.password}".encode()
                    ).decode()
                )
            if self._scheme == "bearer":
                token, expiry = self._tokens.get(scopes, ("", 0.0))
                if not token or time.monotonic() > expiry:
                    token, expiry = self._fetch_token(scopes)
                    self._tokens[scopes] = (token, expiry)
                return "Bearer " + token
            return None

    def challenged(self, header: str, scopes: tuple[str, ...]) -> None:
        scheme, params = parse_challenge(header)
        with self._lock:
            if scheme not in ("basic", "bearer"):
                raise AuthError(
                    f"registry {self._registry.name} asks for unsupported auth scheme {scheme!r}"
                )
            self._scheme, self._params = scheme, params
            self._tokens.pop(scopes, None)

    def _fetch_token(self, scopes: tuple[str, ...]) -> tuple[str, float]:
        realm = self._params.get("realm")
        if not realm:
            raise AuthError(
                f"registry {self._registry.name} sent a Bearer challenge without a realm"
            )
        creds = self.credentials
        query = (
            [("service", self._params["service"])] if "service" in self._params else []
        )
        query += [("scope", scope) for scope in scopes]
        headers = {"User-Agent": USER_AGENT}
        if creds and creds.identity_token:
            # OAuth2 refresh-token grant: what Docker's identity tokens are for.
            form = query + [
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.identity_token),
            ]
            form.append(("client_id", "oci-registry-client"))
            request = urllib.request.Request(
                realm, data=urllib.parse.urlencode(form).encode(), headers=headers
            )
        else:
            if creds:
                basic = base64.b64encode(
                    f"{creds.username}:{creds.password}".encode()
                ).decode()
                headers["Authorization"] = "Basic " + basic
            separator = "&" if "?" in realm else "?"
            request = urllib.request.Request(
                realm + separator + urllib.parse.urlencode(query), headers=headers
            )
        body = self._registry.retrying(
            f"get a token from {realm}", lambda: _urlopen(request)
        )
        try:
            data = json.loads(body)
            token = data.get("token") or data["access_token"]
        except (ValueError, KeyError):
            raise AuthError(f"token server {realm} returned no token") from None
        lifetime = float(data.get("expires_in") or 60)
        return token, time.monotonic() + max(lifetime - 10, lifetime / 2)

    def describe_credentials(self) -> str:
        creds = self.credentials
        if not creds:
            return "anonymously (no credentials found for it in Docker's config.json)"
        user = creds.username or "an identity token"
        return f"as {user} (credentials from {creds.source})"


def _urlopen(request: urllib.request.Request) -> bytes:
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        body = error.read()
        if error.code in RETRYABLE_STATUSES:
            raise _HTTPStatusError(
                error.code, body, _retry_after(error.headers.get("Retry-After"))
            ) from None
        if error.code in (401, 403):
            raise AuthError(
                f"the token server {request.full_url.split('?')[0]} refused the credentials ({error.code}): "
                "check the user name and password (or token) in your Docker config.json / `docker login`"
            ) from None
        raise RegistryError(
            f"token request to {request.full_url} failed: {error.code} {_error_text(body)}"
        ) from None
