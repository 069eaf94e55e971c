"""Stand-in for buildozer's module extension: @bazel_tools uses it only for `bazel mod tidy`."""

def _empty_repo_impl(repository_ctx):
    repository_ctx.file("BUILD.bazel", "")

_empty_repo = repository_rule(implementation = _empty_repo_impl)

def _buildozer_binary_impl(_module_ctx):
    _empty_repo(name = "buildozer_binary")

buildozer_binary = module_extension(implementation = _buildozer_binary_impl)
