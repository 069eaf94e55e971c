"""A target that fails analysis with a message: how @debian reports an unusable lock lazily."""

def _lock_error_impl(ctx):
    fail(ctx.attr.message)

lock_error = rule(
    implementation = _lock_error_impl,
    attrs = {"message": attr.string(mandatory = True)},
)
