"""Amazon ECR: registry auth through boto3's get_authorization_token, and repository creation.

boto3 is imported only here and only when an ECR registry is used, so the rest of the
client keeps running on a bare python3. Credentials and region follow boto3's standard
chain (AWS_PROFILE, AWS_ACCESS_KEY_ID, instance roles, ...); AWS_ENDPOINT_URL_ECR points
the API elsewhere (e.g. a moto server).
"""

from __future__ import annotations

import base64
import re

from tools.registry import client

ECR_HOST = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$"
)


def parse_host(registry_name: str) -> tuple[str, str] | None:
    """(account, region) of an ECR registry name, or None for other registries."""
    match = ECR_HOST.match(registry_name.split(":")[0])
    return (match["account"], match["region"]) if match else None


def _client(region: str):
    """An ECR API client and the botocore errors it raises (both imported only here)."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise client.RegistryError(
            "pushing to Amazon ECR needs boto3; run through Bazel (the push tool depends on "
            "@pypi//boto3) or `pip install boto3`"
        ) from None
    session = boto3.session.Session()
    return session.client("ecr", region_name=region), (BotoCoreError, ClientError)


def _code(error: Exception) -> str:
    return (getattr(error, "response", None) or {}).get("Error", {}).get("Code", "")


def _explain(error: Exception, action: str, registry_name: str) -> client.RegistryError:
    name = type(error).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return client.AuthError(
            f"cannot {action} for {registry_name}: no AWS credentials found; configure them the "
            "usual way (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, `aws sso login`, "
            "an instance role)"
        )
    message = (
        (getattr(error, "response", None) or {})
        .get("Error", {})
        .get("Message", str(error))
    )
    return client.RegistryError(
        f"cannot {action} for {registry_name}: {_code(error) or name}: {message}"
    )


def credentials(registry_name: str) -> client.Credentials:
    account, region = parse_host(registry_name)
    ecr, errors = _client(region)
    try:
        response = ecr.get_authorization_token(registryIds=[account])
        token = response["authorizationData"][0]["authorizationToken"]
    except errors as error:
        raise _explain(error, "get an ECR authorization token", registry_name) from None
    username, _, password = base64.b64decode(token).decode().partition(":")
    return client.Credentials(username, password, "ECR get_authorization_token")


def ensure_repositories(
    registry_name: str,
    repositories: list[str],
    create: bool,
    immutable_tags: bool = False,
    dry_run: bool = False,
) -> list[str]:
    """Checks the repositories exist; creates missing ones if `create`. Returns those (to be) created."""
    account, region = parse_host(registry_name)
    ecr, errors = _client(region)
    missing = []
    for repository in sorted(set(repositories)):
        try:
            ecr.describe_repositories(registryId=account, repositoryNames=[repository])
        except errors as error:
            if _code(error) != "RepositoryNotFoundException":
                raise _explain(
                    error, f"look up repository {repository}", registry_name
                ) from None
            missing.append(repository)
    if missing and not create:
        raise client.RegistryError(
            f"repository {', '.join(missing)} does not exist in {registry_name}; create it (for example in "
            "your IaC) or pass --create-repositories"
        )
    if dry_run:
        return missing
    for repository in missing:
        try:
            ecr.create_repository(
                registryId=account,
                repositoryName=repository,
                imageScanningConfiguration={"scanOnPush": True},
                imageTagMutability="IMMUTABLE" if immutable_tags else "MUTABLE",
            )
        except errors as error:
            # Another push may have created it meanwhile.
            if _code(error) != "RepositoryAlreadyExistsException":
                raise _explain(
                    error, f"create repository {repository}", registry_name
                ) from None
    return missing
