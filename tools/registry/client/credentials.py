"""Registry credentials from Docker's config.json / containers' auth.json and credential helpers."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from tools.registry.client.errors import AuthError


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
