"""Registry credentials: htpasswd lines, a docker config, and a token server speaking the
registry's token auth."""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.push.support.serving import serve_in_thread, stop_serving


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
