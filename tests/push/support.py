"""Real servers for the push and pull tests: docker-registry with htpasswd or token auth,
a token server, a fault-injecting proxy, moto's ECR; and small OCI image layouts."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tools.registry import client
from tools.registry.local_registry import LocalRegistry

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("PUSH_TEST_REQUIRE_TOOLS") == "1":
            pytest.fail(
                f"{name} is required (PUSH_TEST_REQUIRE_TOOLS=1) but not installed"
            )
        pytest.skip(f"{name} is not installed")
    return path


# --------------------------------------------------------------------------- images


def layer_bytes(files: dict[str, bytes]) -> bytes:
    """A reproducible gzip tar layer holding `files`."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def random_bytes(size: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclasses.dataclass
class BuiltImage:
    layout: Path
    digest: str
    manifest: bytes
    config_size: int
    layer_sizes: list[int]
    layer_digests: list[str]

    @property
    def blob_bytes(self) -> int:
        return self.config_size + sum(self.layer_sizes)


def write_image(
    destination: Path,
    layers: list[bytes],
    architecture: str = "arm64",
    label: str = "",
) -> BuiltImage:
    """An OCI layout with one image manifest, its config and `layers` (gzip tar bytes)."""
    blobs = destination / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = client.sha256_digest(data)
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    layer_descriptors = [
        {"mediaType": OCI_LAYER, "digest": put(layer), "size": len(layer)}
        for layer in layers
    ]
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["handler.handle"], "Labels": {"test": label}},
        "rootfs": {
            "type": "layers",
            "diff_ids": [
                client.sha256_digest(gzip.decompress(layer)) for layer in layers
            ],
        },
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": client.OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": put(config_bytes),
                "size": len(config_bytes),
            },
            "layers": layer_descriptors,
        },
        sort_keys=True,
    ).encode()
    digest = put(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": client.OCI_INDEX,
        "manifests": [
            {"mediaType": client.OCI_MANIFEST, "digest": digest, "size": len(manifest)}
        ],
    }
    (destination / "index.json").write_text(json.dumps(index))
    (destination / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return BuiltImage(
        destination,
        digest,
        manifest,
        len(config_bytes),
        [len(layer) for layer in layers],
        [descriptor["digest"] for descriptor in layer_descriptors],
    )


HANDLERS = (
    "receipt_upload",
    "ocr_result",
    "embed_lines",
    "embed_words",
    "similarity",
    "compaction",
)


class HandlerImages:
    """Six handler-like images sharing a base layer and a dependency layer, one handler layer each.

    The base layer is larger than the tests' chunk size so it goes up in PATCH chunks.
    """

    def __init__(self, root: Path, base_size: int = 3 << 20):
        self.root = root
        self.base = layer_bytes(
            {"var/runtime/bootstrap": random_bytes(base_size, "base")}
        )
        self.deps = layer_bytes({"var/task/lib/dep.py": random_bytes(200_000, "deps")})
        self.sources = {
            name: f"def handle(event, context):\n    return {name!r}\n".encode()
            for name in HANDLERS
        }

    def build(self, name: str, generation: int = 0) -> BuiltImage:
        handler = layer_bytes({"var/task/handler.py": self.sources[name]})
        return write_image(
            self.root / f"{name}-{generation}",
            [self.base, self.deps, handler],
            label=name,
        )

    def build_all(self, generation: int = 0) -> dict[str, BuiltImage]:
        return {name: self.build(name, generation) for name in HANDLERS}


# --------------------------------------------------------------------------- test servers


def serve_in_thread(server: http.server.HTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def stop_serving(server: http.server.HTTPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=60)
    assert not thread.is_alive(), (
        f"{type(server).__name__} on port {server.server_address[1]} did not stop within 60 s"
    )


# --------------------------------------------------------------------------- auth material


def htpasswd_line(user: str, password: str) -> str:
    return (
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}"
    )


def docker_config(directory: Path, registry: str, user: str, password: str) -> Path:
    """A Docker config dir (for DOCKER_CONFIG) holding credentials for `registry`."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (directory / "config.json").write_text(
        json.dumps({"auths": {registry: {"auth": auth}}})
    )
    return directory


def _libtrust_key_id(public_key) -> str:
    """The key ID docker-registry's token auth matches a JWT's `kid` against."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class TokenServer:
    """An OAuth2-style token server for docker-registry's `auth.token` scheme.

    Authenticated users get every action they ask for; anonymous callers get `pull`
    only when allow_anonymous_pull is set. Records the claims of each token it issues. The
    first `expired_tokens` tokens have expired ten minutes ago although the answer says they
    last an hour: what a client holding a token past its lifetime sends.
    """

    service = "test-registry"
    issuer = "test-token-issuer"

    def __init__(
        self,
        directory: Path,
        users: dict[str, str],
        allow_anonymous_pull: bool = False,
        expired_tokens: int = 0,
    ):
        self.expired_tokens = expired_tokens
        self._issue_lock = threading.Lock()

        self.users, self.allow_anonymous_pull = users, allow_anonymous_pull
        self.issued: list[dict] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token issuer")])
        now = time.time()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(now - 3600, datetime.UTC))
            .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.UTC))
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / "token-issuer.pem"
        self.cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self._kid = _libtrust_key_id(self._key.public_key())
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user = server.authenticate(self.headers.get("Authorization", ""))
                if user is None:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(
                    {
                        "token": server.token(user, query.get("scope", [])),
                        "expires_in": 3600,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self._http.server_address[1]}/token"
        self._thread = serve_in_thread(self._http)

    def authenticate(self, header: str) -> str | None:
        """The user name, "" for anonymous, None for wrong credentials."""
        if not header:
            return ""
        scheme, _, value = header.partition(" ")
        user, _, password = base64.b64decode(value).decode().partition(":")
        if scheme != "Basic" or self.users.get(user) != password:
            return None
        return user

    def token(self, user: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            granted = (
                actions.split(",")
                if user
                else [a for a in actions.split(",") if a == "pull"]
            )
            if not user and not self.allow_anonymous_pull:
                granted = []
            access.append({"type": kind, "name": name, "actions": granted})
        with self._issue_lock:
            now = int(time.time())
            if len(self.issued) < self.expired_tokens:
                now -= 1200  # beyond docker-registry's leeway for clock skew
            claims = {
                "iss": self.issuer,
                "sub": user,
                "aud": self.service,
                "exp": now + 300,
                "nbf": now - 10,
                "iat": now,
                "jti": secrets.token_hex(8),
                "access": access,
            }
            self.issued.append(claims)
        header = {"typ": "JWT", "alg": "RS256", "kid": self._kid}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{signing_input}.{_b64url(signature)}"

    def auth_config(self) -> dict:
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.cert_path),
            }
        }

    def close(self) -> None:
        stop_serving(self._http, self._thread)


# --------------------------------------------------------------------------- fault injection


@dataclasses.dataclass
class Fault:
    """Fails the first `times` requests whose method and path match.

    action: "500" or "429" (a response, not forwarded); "404" (the registry's not-found answer
    for the path: an unknown upload session, manifest or blob); "drop" (forward half of the
    request body to the registry, then cut both connections); "unmount" (forward a mount
    request without its mount, so the registry answers 202 with a new upload session, as
    registries that cannot mount do); "redirect" (307 to the proxy's `redirect_to` + path);
    "unauthorized" (forward without the Authorization header, so the registry answers 401 with
    its challenge, as it does once a token has expired).
    """

    method: str
    path_contains: str
    action: str
    times: int = 1
    hits: int = 0


class FaultProxy:
    """An HTTP proxy in front of a registry that injects failures and counts requests."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.redirect_to = ""
        self.requests: list[tuple[str, str]] = []
        self.injected: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self):
                length = int(self.headers.get("Content-Length") or 0)
                fault = proxy.match(self.command, self.path)
                if fault and fault.action in ("500", "429"):
                    self.rfile.read(length)
                    body = (
                        b'{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}'
                    )
                    self.send_response(int(fault.action))
                    if fault.action == "429":
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if fault and fault.action in ("404", "redirect"):
                    self.rfile.read(length)
                    if fault.action == "404":
                        code = (
                            "BLOB_UPLOAD_UNKNOWN"
                            if "/uploads/" in self.path
                            else "MANIFEST_UNKNOWN"
                            if "/manifests/" in self.path
                            else "BLOB_UNKNOWN"
                        )
                        body = json.dumps(
                            {"errors": [{"code": code, "message": "injected"}]}
                        ).encode()
                        self.send_response(404)
                    else:
                        body = b""
                        self.send_response(307)
                        self.send_header("Location", proxy.redirect_to + self.path)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
                path = self.path
                if fault and fault.action == "unmount":
                    split = urllib.parse.urlsplit(path)
                    query = [
                        (key, value)
                        for key, value in urllib.parse.parse_qsl(split.query)
                        if key not in ("mount", "from")
                    ]
                    path = urllib.parse.urlunsplit(
                        ("", "", split.path, urllib.parse.urlencode(query), "")
                    )
                upstream = http.client.HTTPConnection(
                    "127.0.0.1", proxy.upstream_port, timeout=60
                )
                upstream.putrequest(
                    self.command, path, skip_host=True, skip_accept_encoding=True
                )
                for key, value in self.headers.items():
                    if (
                        fault
                        and fault.action == "unauthorized"
                        and key.lower() == "authorization"
                    ):
                        continue
                    upstream.putheader(key, value)
                upstream.endheaders()
                if fault and fault.action == "drop":
                    upstream.send(self.rfile.read(length // 2))
                    upstream.sock.shutdown(socket.SHUT_RDWR)
                    upstream.close()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                remaining = length
                while remaining:
                    block = self.rfile.read(min(remaining, 1 << 20))
                    upstream.send(block)
                    remaining -= len(block)
                response = upstream.getresponse()
                body = response.read()
                self.send_response_only(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in (
                        "transfer-encoding",
                        "connection",
                        "content-length",
                    ):
                        self.send_header(key, value)
                # A HEAD's Content-Length is the size of what a GET would return, not zero.
                length = (
                    response.getheader("Content-Length")
                    if self.command == "HEAD"
                    else None
                )
                self.send_header("Content-Length", length or str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                upstream.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_one

            def log_message(self, *args):
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._http.server_address[1]
        self._thread = serve_in_thread(self._http)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def match(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            for fault in self.faults:
                if (
                    fault.method == method
                    and fault.path_contains in path
                    and fault.hits < fault.times
                ):
                    fault.hits += 1
                    self.injected.append((method, path, fault.action))
                    return fault
        return None

    def close(self) -> None:
        stop_serving(self._http, self._thread)


class BlobStore:
    """Another host serving blobs by digest, as S3 does for ECR's redirected blob GETs; records
    the headers of each request it gets."""

    def __init__(self, blobs: dict[str, bytes]):
        self.blobs = blobs
        self.requests: list[dict[str, str]] = []
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                store.requests.append(dict(self.headers.items()))
                digest = self.path.rsplit("/", 1)[-1]
                body = store.blobs.get(digest)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # "localhost", not 127.0.0.1: another host name than the registry's, as S3's is.
        self.url = f"http://localhost:{self._http.server_address[1]}"
        self._thread = serve_in_thread(self._http)

    def close(self) -> None:
        stop_serving(self._http, self._thread)


# --------------------------------------------------------------------------- running things


@contextlib.contextmanager
def registry(root: Path, auth: dict | None = None):
    require_tool("docker-registry")
    server = LocalRegistry(root, auth=auth)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def skopeo_copy(source: str, destination: str, *extra: str) -> None:
    skopeo = require_tool("skopeo")
    command = [
        skopeo,
        "--insecure-policy",
        "copy",
        "--quiet",
        *extra,
        source,
        destination,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"


@contextlib.contextmanager
def refused_port():
    """A loopback port bound but not listening while the context lasts: connecting is refused,
    and no other test can start a server on it meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@dataclasses.dataclass
class RunningRegistry:
    server: LocalRegistry
    address: str
    user: str = ""
    password: str = ""

    def client(self) -> client.Registry:
        """A registry client of our own, to look at what a push left behind."""
        credentials = client.Credentials(self.user, self.password, "test")
        return client.Registry(
            client.parse_registry(self.address),
            lambda: credentials if self.user else None,
        )


def image_args(built: dict[str, BuiltImage]) -> list[str]:
    return [f"--image={name}={image.layout}" for name, image in built.items()]
