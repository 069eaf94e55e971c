"""What ci/codebuild/check.py needs from the CI definitions, read from the YAML files themselves:
the buildspec's variables, phases, artifacts and cache paths, and from the CloudFormation template
the ECR repository names and the variables the CodeBuild project sets."""

from __future__ import annotations

from pathlib import Path

import yaml

# CodeBuild runs the phases in this order; a buildspec may leave any of them out.
PHASES = ("install", "pre_build", "build", "post_build")


class DefinitionError(Exception):
    pass


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form intrinsics (!Ref, !Sub, !GetAtt ...) as plain values."""


def _intrinsic(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}


_CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def read_buildspec(path: Path) -> dict:
    """{"variables": {...}, "phases": [{"name", "commands", "abort_on_failure"}], "artifacts",
    "cache_paths"} of a CodeBuild buildspec (version 0.2)."""
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or str(spec.get("version")) != "0.2":
        raise DefinitionError(f"{path}: not a version 0.2 buildspec")
    unknown = set(spec.get("phases", {})) - set(PHASES)
    if unknown:
        raise DefinitionError(
            f"{path}: unknown phases {sorted(unknown)}; CodeBuild has {PHASES}"
        )
    env = spec.get("env", {})
    if env.get("shell", "bash") != "bash":
        raise DefinitionError(f"{path}: env.shell must be bash (the check runs bash)")
    phases = []
    for name in PHASES:
        phase = spec.get("phases", {}).get(name)
        if phase is None:
            continue
        commands = phase.get("commands", [])
        if not commands or not all(isinstance(c, str) for c in commands):
            raise DefinitionError(f"{path}: phase {name} needs a list of commands")
        phases.append(
            {
                "name": name,
                "commands": commands,
                "abort_on_failure": phase.get("on-failure") == "ABORT",
            }
        )
    artifacts = spec.get("artifacts", {})
    return {
        "variables": {k: str(v) for k, v in env.get("variables", {}).items()},
        "phases": phases,
        "artifacts": {
            "base_directory": artifacts.get("base-directory", "."),
            "files": artifacts.get("files", []),
        },
        "cache_paths": spec.get("cache", {}).get("paths", []),
    }


def read_template(path: Path) -> dict:
    """{"repositories": [ECR repository names], "project_variables": [names the build project
    sets]} of the CloudFormation template."""
    template = yaml.load(path.read_text(), Loader=_CloudFormationLoader)
    resources = template.get("Resources", {})
    repositories = sorted(
        resource["Properties"]["RepositoryName"]
        for resource in resources.values()
        if resource.get("Type") == "AWS::ECR::Repository"
    )
    projects = [
        resource["Properties"]
        for resource in resources.values()
        if resource.get("Type") == "AWS::CodeBuild::Project"
        and resource["Properties"]["Source"].get("BuildSpec")
        == "ci/codebuild/buildspec.yml"
    ]
    if len(projects) != 1:
        raise DefinitionError(
            f"{path}: expected one CodeBuild project using ci/codebuild/buildspec.yml, "
            f"found {len(projects)}"
        )
    variables = projects[0]["Environment"].get("EnvironmentVariables", [])
    return {
        "repositories": repositories,
        "project_variables": sorted(variable["Name"] for variable in variables),
    }
