"""A small OCI distribution-spec (registry v2) client using only the standard library.

Standard library only so that a Bazel repository rule can run it with the build
environment's plain python3 at fetch time (tools/registry/pull.bzl); boto3 is
imported lazily, and only for ECR registries (tools/registry/ecr.py).

Covers what pushing and pulling images needs: anonymous, Basic and Bearer-token
auth (from the registry's WWW-Authenticate challenge), HEAD/GET/PUT of manifests
and blobs, blob uploads (monolithic PUT for small blobs, chunked PATCH with resume
for large ones, streamed from disk, digests verified), cross-repository mounts, and
retries with backoff for 5xx, 429 (honouring Retry-After) and dropped connections.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import hashlib
import http.client
import ipaddress
import json
import os
import random
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ALL_MANIFEST_TYPES = IMAGE_MANIFEST_TYPES + INDEX_TYPES

USER_AGENT = "oci-registry-client/1 (python)"
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
# Repository path components per the distribution spec.
REPOSITORY_PATTERN = re.compile(
    r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$"
)
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
HOSTNAME_PATTERN = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Dropped or reset connections and timeouts; DNS and certificate failures are not transient.
TRANSIENT_ERRORS = (
    ConnectionError,
    TimeoutError,
    http.client.HTTPException,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)
STREAM_BLOCK = 1 << 20


class RegistryError(Exception):
    """A failure with a message meant for the person running the tool."""

    def __init__(self, message: str, codes: frozenset[str] = frozenset()):
        super().__init__(message)
        self.codes = codes  # the registry's error codes, e.g. NAME_UNKNOWN


class AuthError(RegistryError):
    pass


class NotFoundError(RegistryError):
    pass


class DigestMismatchError(RegistryError):
    pass


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    if not DIGEST_PATTERN.match(digest or ""):
        raise RegistryError(
            f"{digest!r} is not a sha256 digest (expected 'sha256:' and 64 lowercase hex digits)"
        )
    return digest


def check_repository(repository: str) -> str:
    if not REPOSITORY_PATTERN.match(repository or ""):
        raise RegistryError(
            f"{repository!r} is not a valid repository name: use lowercase letters, digits and separators "
            "('.', '_', '-', '/'), e.g. 'team/receipt-upload'"
        )
    return repository


def check_tag(tag: str) -> str:
    if not TAG_PATTERN.match(tag or ""):
        raise RegistryError(
            f"{tag!r} is not a valid tag: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return tag


# --------------------------------------------------------------------------- addresses


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


# --------------------------------------------------------------------------- credentials


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    source: str  # where they came from, for error messages
    identity_token: str = ""


def _config_candidates(env: Mapping[str, str]) -> list[Path]:
    home = env.get("HOME")
    paths = []
    if env.get("DOCKER_CONFIG"):
        paths.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    elif home:
        paths.append(Path(home) / ".docker" / "config.json")
    # skopeo/podman/buildah keep `login` credentials in the same format.
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    if home:
        paths.append(Path(home) / ".config" / "containers" / "auth.json")
    return paths


def _auth_keys(registry: str) -> list[str]:
    keys = [
        registry,
        f"https://{registry}",
        f"http://{registry}",
        f"https://{registry}/v1/",
        f"https://{registry}/v2/",
    ]
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        keys.append("https://index.docker.io/v1/")
    return keys


def _credential_helper(helper: str, registry: str, source: str) -> Credentials | None:
    """Runs `docker-credential-HELPER get` as Docker does; None when it has nothing for `registry`."""
    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run(
            [program, "get"],
            check=False,
            input=registry,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        raise AuthError(
            f"{source} names credential helper {helper!r} for {registry}, but {program} is not on PATH"
        ) from None
    except subprocess.TimeoutExpired:
        raise AuthError(
            f"credential helper {program} (named in {source}) did not answer within 60 s"
        ) from None
    said = " ".join((result.stderr.strip() or result.stdout.strip()).split())
    if result.returncode != 0:
        # The protocol's answer for "nothing stored for this registry" (docker-credential-helpers).
        if "credentials not found" in said.lower():
            return None
        raise AuthError(
            f"credential helper {program} failed (exit {result.returncode}): {said[:300]}; "
            f"fix the helper or log in again (it is named in {source})"
        )
    try:
        data = json.loads(result.stdout)
        username, secret = data.get("Username", ""), data.get("Secret", "")
    except (ValueError, AttributeError):
        raise AuthError(
            f"{program} answered {result.stdout.strip()[:80]!r} instead of the credential helper "
            f"protocol's JSON object; check the helper (named in {source})"
        ) from None
    if username == "<token>":
        return Credentials("", "", program, identity_token=secret)
    return Credentials(username, secret, program)


def docker_credentials(
    registry: str, env: Mapping[str, str] | None = None
) -> Credentials | None:
    """Credentials for `registry` from Docker's config.json (or containers auth.json), if any."""
    env = os.environ if env is None else env
    for path in _config_candidates(env):
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as error:
            raise AuthError(
                f"cannot read registry credentials from {path}: {error}"
            ) from None
        helper = (config.get("credHelpers") or {}).get(registry)
        if helper:
            return _credential_helper(helper, registry, str(path))
        auths = config.get("auths") or {}
        for key in _auth_keys(registry):
            entry = auths.get(key)
            if not entry:
                continue
            username, password = entry.get("username", ""), entry.get("password", "")
            if entry.get("auth"):
                try:
                    username, _, password = (
                        base64.b64decode(entry["auth"]).decode().partition(":")
                    )
                except ValueError:
                    raise AuthError(
                        f"{path}: auths[{key!r}].auth is not base64 'user:password'"
                    ) from None
            if username or password or entry.get("identitytoken"):
                return Credentials(
                    username,
                    password,
                    str(path),
                    identity_token=entry.get("identitytoken", ""),
                )
        if config.get("credsStore"):
            found = _credential_helper(config["credsStore"], registry, str(path))
            if found:
                return found
    return None


CredentialSource = Callable[[], "Credentials | None"]


# --------------------------------------------------------------------------- auth


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


class _HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes, retry_after: float | None):
        super().__init__(status)
        self.status, self.body, self.retry_after = status, body, retry_after


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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(
            0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        )
    except (TypeError, ValueError):
        return None


def _error_text(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return (
            "; ".join(
                f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                for e in errors
            )
            or body[:200].decode()
        )
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace").strip()


def _error_codes(body: bytes) -> set[str]:
    try:
        return {e.get("code", "") for e in json.loads(body).get("errors") or []}
    except (ValueError, AttributeError):
        return set()


# --------------------------------------------------------------------------- request bodies


class _FileSlice:
    """Streams `length` bytes of a file from `offset` without loading it into memory."""

    def __init__(self, path: Path, offset: int, length: int):
        # Closed by close(): http.client reads it lazily while sending.
        self._file = open(path, "rb")  # noqa: SIM115
        self._file.seek(offset)
        self._remaining = length

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        size = (
            self._remaining if size is None or size < 0 else min(size, self._remaining)
        )
        data = self._file.read(size)
        if not data:
            raise RegistryError(
                f"{self._file.name} is shorter than its descriptor says; rebuild the image"
            )
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._file.close()


@dataclasses.dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


# --------------------------------------------------------------------------- the client


class Registry:
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

    # ---- transport

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

    # ---- API

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

    def blob_size(
        self, repository: str, digest: str, actions: str = "pull"
    ) -> int | None:
        """The blob's size if `repository` has it, else None."""
        response = self.request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            scopes=self.scopes(repository, actions),
            ok=(200, 404),
            what=f"checking blob {digest} in {repository}",
        )
        if response.status == 404:
            return None
        return int(response.headers.get("Content-Length") or 0)

    def manifest_digest(
        self, repository: str, reference: str, actions: str = "pull"
    ) -> str | None:
        """The digest `reference` (a tag or digest) resolves to in `repository`, or None."""
        response = self.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scopes=self.scopes(repository, actions),
            headers={"Accept": ", ".join(ALL_MANIFEST_TYPES)},
            ok=(200, 404),
            what=f"checking manifest {reference} in {repository}",
        )
        if response.status == 404:
            return None
        return response.headers.get("Docker-Content-Digest") or (
            reference if reference.startswith("sha256:") else None
        )

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """Returns (bytes, media type, digest); verifies the digest when `reference` is one."""
        response = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scopes=self.scopes(repository),
            headers={"Accept": ", ".join(ALL_MANIFEST_TYPES)},
            what=f"fetching manifest {reference} of {repository}",
        )
        digest = sha256_digest(response.body)
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatchError(
                f"manifest {repository}@{reference} from {self.name} has digest {digest}"
            )
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in ALL_MANIFEST_TYPES:
            media_type = json.loads(response.body).get("mediaType", media_type)
        return response.body, media_type, digest

    def put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str
    ) -> str:
        digest = sha256_digest(body)
        response = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scopes=self.scopes(repository, "pull,push"),
            headers={"Content-Type": media_type},
            body=body,
            ok=(200, 201),
            what=f"putting manifest {reference} to {repository}",
        )
        returned = response.headers.get("Docker-Content-Digest")
        if returned and returned != digest:
            raise DigestMismatchError(
                f"{self.name} stored manifest {digest} of {repository} as {returned}"
            )
        return digest

    def list_tags(self, repository: str) -> list[str]:
        response = self.request(
            "GET", f"/v2/{repository}/tags/list", scopes=self.scopes(repository)
        )
        return json.loads(response.body).get("tags") or []

    def fetch_blob(
        self, repository: str, digest: str, destination: Path, size: int | None = None
    ) -> int:
        """Downloads a blob to `destination` (atomically), verifying its sha256 and size."""
        check_digest(digest)
        destination = Path(destination)
        temporary = destination.with_name(destination.name + ".partial")

        def consume(response) -> None:
            hasher, written = hashlib.sha256(), 0
            with open(temporary, "wb") as out:
                while block := response.read(STREAM_BLOCK):
                    hasher.update(block)
                    out.write(block)
                    written += len(block)
            if size is not None and written < size:
                raise ConnectionError(
                    f"blob {digest} ended after {written} of {size} bytes"
                )
            if "sha256:" + hasher.hexdigest() != digest or (
                size is not None and written != size
            ):
                temporary.unlink()
                raise DigestMismatchError(
                    f"blob {digest} of {repository} from {self.name} arrived as sha256:{hasher.hexdigest()} "
                    f"({written} bytes); refusing it"
                )

        self.request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scopes=self.scopes(repository),
            stream_to=consume,
            what=f"fetching blob {digest} of {repository}",
        )
        os.replace(temporary, destination)
        return destination.stat().st_size

    def mount_blob(self, repository: str, digest: str, source: str) -> str | None:
        """Cross-repository mount. Returns None when mounted, else an upload URL to use instead."""
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        response = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/?{query}",
            scopes=self.scopes(repository, "pull,push", mount_from=source),
            ok=(201, 202),
            what=f"mounting blob {digest} from {source} into {repository}",
        )
        if response.status == 201:
            return None
        return self.url(response.headers["Location"])

    def start_upload(self, repository: str) -> tuple[str, int]:
        response = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scopes=self.scopes(repository, "pull,push"),
            ok=(202,),
            what=f"starting a blob upload to {repository}",
        )
        minimum = int(response.headers.get("OCI-Chunk-Min-Length") or 0)
        return self.url(response.headers["Location"]), minimum

    def upload_blob(
        self,
        repository: str,
        digest: str,
        path: Path,
        size: int,
        location: str | None = None,
    ) -> int:
        """Uploads the file at `path` as blob `digest`; returns the bytes sent by the attempt that succeeded.

        Small blobs go in one PUT. Large ones go in PATCH chunks; after a failed chunk the
        upload resumes from the offset the registry reports, or restarts when it cannot.
        """
        check_digest(digest)
        path = Path(path)
        actual_size = path.stat().st_size
        if actual_size != size:
            raise RegistryError(
                f"{path} has {actual_size} bytes but its descriptor says {size}; rebuild the image"
            )
        # Checked before sending anything so a corrupt layout never reaches the registry.
        if file_digest(path) != digest:
            raise DigestMismatchError(
                f"{path} does not hash to {digest}: the image layout is corrupt; rebuild it"
            )
        session = {"location": location, "minimum": 0, "resumable": False}

        def attempt() -> int:
            if not session["location"]:
                session["location"], session["minimum"] = self.start_upload(repository)
                session["resumable"] = False
            try:
                if size <= self.monolithic_limit:
                    return self._put_whole(
                        repository, digest, path, size, session["location"]
                    )
                return self._put_chunked(repository, digest, path, size, session)
            except (_HTTPStatusError, *TRANSIENT_ERRORS):
                if size <= self.monolithic_limit:
                    session["location"] = (
                        None  # a failed monolithic PUT leaves nothing worth resuming
                    )
                raise
            except NotFoundError:
                # The upload session expired or the registry cancelled it: start a new one.
                session["location"] = None
                raise ConnectionError(f"upload session for {digest} was lost") from None

        return self.retrying(
            f"uploading blob {digest} ({size} bytes) to {repository}", attempt
        )

    def _finish_url(self, location: str, digest: str) -> str:
        separator = "&" if "?" in location else "?"
        return location + separator + urllib.parse.urlencode({"digest": digest})

    def _put_whole(
        self, repository: str, digest: str, path: Path, size: int, location: str
    ) -> int:
        response = self.request(
            "PUT",
            self._finish_url(location, digest),
            scopes=self.scopes(repository, "pull,push"),
            headers={"Content-Type": "application/octet-stream"},
            body=lambda: _FileSlice(path, 0, size),
            content_length=size,
            ok=(201,),
            what=f"uploading blob {digest} to {repository}",
            retry=False,
        )
        self._check_stored(response, digest, repository)
        return size

    def _upload_offset(self, repository: str, location: str) -> int:
        response = self.request(
            "GET",
            location,
            scopes=self.scopes(repository, "pull,push"),
            ok=(204,),
            what=f"checking upload progress in {repository}",
            retry=False,
        )
        match = re.match(r"^(?:bytes=)?0-(\d+)$", response.headers.get("Range", ""))
        # distribution reports an empty upload as "0-0", which would otherwise read as one byte.
        return int(match.group(1)) + 1 if match and match.group(1) != "0" else 0

    def _put_chunked(
        self, repository: str, digest: str, path: Path, size: int, session: dict
    ) -> int:
        scopes = self.scopes(repository, "pull,push")
        offset = (
            self._upload_offset(repository, session["location"])
            if session["resumable"]
            else 0
        )
        session["resumable"] = True
        chunk = max(self.chunk_size, session["minimum"])
        sent = 0
        while offset < size:
            length = min(chunk, size - offset)
            response = self.request(
                "PATCH",
                session["location"],
                scopes=scopes,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + length - 1}",
                },
                body=lambda start=offset, count=length: _FileSlice(path, start, count),
                content_length=length,
                ok=(202,),
                what=f"uploading bytes {offset}-{offset + length - 1} of blob {digest} to {repository}",
                retry=False,
            )
            session["location"] = self.url(
                response.headers.get("Location") or session["location"]
            )
            offset += length
            sent += length
        response = self.request(
            "PUT",
            self._finish_url(session["location"], digest),
            scopes=scopes,
            ok=(201,),
            what=f"committing blob {digest} to {repository}",
            retry=False,
        )
        self._check_stored(response, digest, repository)
        return sent

    def _check_stored(self, response: Response, digest: str, repository: str) -> None:
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatchError(
                f"{self.name} stored blob {digest} of {repository} as {stored}"
            )


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(STREAM_BLOCK):
            hasher.update(block)
    return "sha256:" + hasher.hexdigest()


def _proxy_for(scheme: str, netloc: str) -> str | None:
    host = netloc.rsplit(":", 1)[0].strip("[]")
    if host in LOOPBACK_HOSTS or urllib.request.proxy_bypass(host):
        return None
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy:
        return None
    return urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy).netloc
