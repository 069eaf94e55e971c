"""Entry point of every pytest_test: runs pytest on the files given as arguments."""

import os
import sys

import pytest


class FailSkipsInCI:
    """Under CI=true a skipped test is a failure: a missing tool, built target or keyring there
    means the check silently did not run, which must not read as a pass."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if report.skipped and not hasattr(report, "wasxfail"):
            self._fail(report, item.nodeid)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(self, collector):
        outcome = yield
        report = outcome.get_result()
        if report.skipped:
            self._fail(report, collector.nodeid)

    def _fail(self, report, nodeid: str) -> None:
        reason = (
            report.longrepr[2]
            if isinstance(report.longrepr, tuple)
            else report.longrepr
        )
        message = (
            f"{nodeid}: skipped under CI=true, which counts as a failure: {reason}"
        )
        report.outcome = "failed"
        report.longrepr = message


def plugins() -> list:
    return [FailSkipsInCI()] if os.environ.get("CI", "").lower() == "true" else []


if __name__ == "__main__":
    args = ["-p", "no:cacheprovider", "-q", *sys.argv[1:]]
    # Bazel collects XML reports from here; pytest's per-test results then show in the test log.
    if "XML_OUTPUT_FILE" in os.environ:
        args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    # Each test run's own directory: in the shared /tmp/pytest-of-USER, parallel runs
    # (--runs_per_test, --jobs) prune each other's numbered directories, and it never shrinks.
    if "TEST_TMPDIR" in os.environ:
        args.append("--basetemp=" + os.path.join(os.environ["TEST_TMPDIR"], "pytest"))
    sys.exit(pytest.main(args, plugins=plugins()))
