"""pytest_test: a py_test that runs its sources with pytest."""

load("@rules_python//python:defs.bzl", "py_test")

def pytest_test(name, srcs, deps = [], args = [], **kwargs):
    """Runs the test files in `srcs` with pytest; `deps`, `data` and the rest are py_test's.

    Args:
      name: test name.
      srcs: test files (test_*.py or *_test.py).
      deps: libraries the tests import.
      args: extra pytest arguments.
      **kwargs: passed to py_test (data, size, tags, env, ...).
    """
    py_test(
        name = name,
        srcs = srcs + ["//tools/pytest:pytest_main.py"],
        main = "//tools/pytest:pytest_main.py",
        args = args + ["$(rootpath %s)" % src for src in srcs],
        deps = deps + ["@pypi//pytest"],
        **kwargs
    )
