"""One registry's connections: auth, redirects, retries with backoff, errors named."""

from __future__ import annotations

import http.client
import random
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping

from tools.registry.client.address import RegistryAddress
from tools.registry.client.auth import _Auth
from tools.registry.client.credentials import CredentialSource, docker_credentials
from tools.registry.client.errors import (
    AuthError,
    DigestMismatchError,
    NotFoundError,
    RegistryError,
)
from tools.registry.client.names import STREAM_BLOCK, USER_AGENT
from tools.registry.client.wire import (
    RETRYABLE_STATUSES,
    TRANSIENT_ERRORS,
    Response,
    _error_codes,
    _error_text,
    _HTTPStatusError,
    _proxy_for,
    _retry_after,
)


class Transport:
    """One registry. Thread-safe: each thread keeps its own connections."""

    def __init__(
        self,
        address: RegistryAddress,
        credentials: CredentialSource | None = None,
        *,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: float = 120.0,
        monolithic_limit: int = 16 << 20,
        chunk_size: int = 16 << 20,
        log: Callable[[str], None] | None = None,
    ):
        self.address = address
        self.name = address.name
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.monolithic_limit, self.chunk_size = monolithic_limit, chunk_size
        self._log = log or (lambda message: None)
        self._auth = _Auth(
            self, credentials or (lambda: docker_credentials(address.name))
        )
        self._local = threading.local()
        self._ssl_context = ssl.create_default_context()

    def retrying(self, what: str, attempt: Callable[[], object]):
        """Runs `attempt`, retrying transient failures with exponential backoff and jitter."""
        for number in range(self.retries + 1):
            try:
                return attempt()
            except _HTTPStatusError as error:
                failure, wait = (
                    f"HTTP {error.status}: {_error_text(error.body)}",
                    error.retry_after,
                )
            except socket.gaierror as error:
                host = urllib.parse.urlsplit(self.address.endpoint).hostname
                raise RegistryError(
                    f"cannot resolve registry host {host!r} ({error.strerror}); check --registry"
                ) from None
            except ssl.SSLCertVerificationError as error:
                raise RegistryError(
                    f"TLS certificate of {self.address.endpoint} is not trusted ({error.verify_message}); install the "
                    "CA certificate (SSL_CERT_FILE) or use http:// for a plain-HTTP registry"
                ) from None
            except TRANSIENT_ERRORS as error:
                self._drop_connections()
                failure, wait = f"{type(error).__name__}: {error}", None
            if number == self.retries:
                raise RegistryError(
                    f"{what} failed after {self.retries + 1} attempts; last error: {failure}"
                )
            delay = min(30.0, self.backoff * 2**number) * (0.5 + random.random() / 2)
            if wait is not None:
                delay = min(max(delay, wait), 120.0)
            self._log(f"retrying {what} in {delay:.1f}s ({failure})")
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        pool = self._local.__dict__.setdefault("pool", {})
        key = (scheme, netloc)
        if key not in pool:
            proxy = _proxy_for(scheme, netloc)
            if scheme == "https":
                connection = http.client.HTTPSConnection(
                    proxy or netloc,
                    timeout=self.timeout,
                    context=self._ssl_context,
                    blocksize=STREAM_BLOCK,
                )
                if proxy:
                    connection.set_tunnel(netloc)
            else:
                connection = http.client.HTTPConnection(
                    proxy or netloc, timeout=self.timeout, blocksize=STREAM_BLOCK
                )
            pool[key] = connection
        return pool[key]

    def _drop_connections(self) -> None:
        for connection in self._local.__dict__.pop("pool", {}).values():
            connection.close()

    def url(self, path: str) -> str:
        return urllib.parse.urljoin(
            self.address.endpoint + "/",
            path.lstrip("/") if path.startswith("/") else path,
        )

    def _send_once(
        self, method: str, url: str, headers: dict[str, str], body, stream_to=None
    ) -> Response:
        split = urllib.parse.urlsplit(url)
        connection = self._connection(split.scheme, split.netloc)
        target = urllib.parse.urlunsplit(("", "", split.path or "/", split.query, ""))
        if _proxy_for(split.scheme, split.netloc) and split.scheme == "http":
            target = url
        try:
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
            if stream_to is not None and response.status == 200:
                stream_to(response)
                data = b""
            else:
                data = response.read()
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        return Response(response.status, response.headers, data)

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scopes: tuple[str, ...],
        headers: Mapping[str, str] | None = None,
        body: Callable[[], object] | bytes | None = None,
        content_length: int | None = None,
        ok: Iterable[int] = (200,),
        stream_to=None,
        what: str = "",
        retry: bool = True,
    ) -> Response:
        """Sends one request with auth, following redirects and retrying transient failures.

        `body` is bytes or a factory of a fresh file-like object (so retries resend it);
        `stream_to(response)` consumes a 200 response's body instead of buffering it.
        """
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        ok = tuple(ok)
        what = what or f"{method} {urllib.parse.urlsplit(url).path}"

        def attempt() -> Response:
            current, auth_retried, redirects = url, False, 0
            while True:
                send_headers = {"User-Agent": USER_AGENT, **(headers or {})}
                same_host = (
                    urllib.parse.urlsplit(current).netloc
                    == urllib.parse.urlsplit(self.address.endpoint).netloc
                )
                if same_host:
                    authorization = self._auth.header(scopes)
                    if authorization:
                        send_headers["Authorization"] = authorization
                payload = body() if callable(body) else body
                if payload is not None or method in ("PUT", "POST", "PATCH"):
                    length = (
                        content_length
                        if content_length is not None
                        else len(payload or b"")
                    )
                    send_headers["Content-Length"] = str(length)
                try:
                    response = self._send_once(
                        method, current, send_headers, payload, stream_to
                    )
                finally:
                    if hasattr(payload, "close"):
                        payload.close()
                if response.status == 401 and same_host and not auth_retried:
                    challenge = response.headers.get("WWW-Authenticate")
                    if challenge:
                        self._auth.challenged(challenge, scopes)
                        auth_retried = True
                        continue
                if (
                    response.status in (301, 302, 303, 307, 308)
                    and method in ("GET", "HEAD")
                    and redirects < 5
                ):
                    # Blob stores (S3 for ECR) get no registry Authorization: it belongs to the registry only.
                    current, redirects = (
                        urllib.parse.urljoin(current, response.headers["Location"]),
                        redirects + 1,
                    )
                    continue
                if response.status in ok:
                    return response
                if response.status in RETRYABLE_STATUSES:
                    raise _HTTPStatusError(
                        response.status,
                        response.body,
                        _retry_after(response.headers.get("Retry-After")),
                    )
                self._raise_for(response, what, scopes)

        if not retry:
            return attempt()
        return self.retrying(what, attempt)

    def _raise_for(self, response: Response, what: str, scopes: tuple[str, ...]):
        codes = frozenset(_error_codes(response.body))
        detail = _error_text(response.body) or f"HTTP {response.status}"
        if response.status == 401:
            repositories = (
                ", ".join(scope.split(":")[1] for scope in scopes) or "the registry"
            )
            raise AuthError(
                f"registry {self.name} rejected {what} {self._auth.describe_credentials()}: {detail}; check the "
                f"credentials (`docker login {self.name}`) and that they may access {repositories}",
                codes,
            )
        if response.status == 403:
            raise AuthError(
                f"registry {self.name} denied {what} {self._auth.describe_credentials()}: {detail}",
                codes,
            )
        if response.status == 404 or codes & {
            "NAME_UNKNOWN",
            "MANIFEST_UNKNOWN",
            "BLOB_UNKNOWN",
        }:
            raise NotFoundError(f"{what} on {self.name}: not found ({detail})", codes)
        if "DIGEST_INVALID" in codes:
            raise DigestMismatchError(
                f"{what} on {self.name}: the registry computed another digest ({detail})",
                codes,
            )
        raise RegistryError(
            f"{what} on {self.name} failed: HTTP {response.status} {detail}", codes
        )

    @staticmethod
    def scopes(
        repository: str, actions: str = "pull", mount_from: str | None = None
    ) -> tuple[str, ...]:
        scopes = (f"repository:{repository}:{actions}",)
        if mount_from and mount_from != repository:
            scopes += (f"repository:{mount_from}:pull",)
        return scopes

    def ping(self) -> None:
        """Checks that the endpoint speaks the registry API, learning how it wants auth."""

        def attempt() -> None:
            try:
                self.request(
                    "GET",
                    "/v2/",
                    scopes=(),
                    what="contacting the registry",
                    retry=False,
                )
            except ConnectionRefusedError:
                # Before anything was pushed, a refusal means a wrong address, not a hiccup.
                raise RegistryError(
                    f"nothing answers at {self.address.endpoint} (connection refused); check the registry "
                    "address and that the registry is running"
                ) from None

        try:
            self.retrying("contacting the registry", attempt)
        except NotFoundError:
            raise RegistryError(
                f"{self.address.endpoint} does not look like an OCI registry (GET /v2/ is 404)"
            ) from None
