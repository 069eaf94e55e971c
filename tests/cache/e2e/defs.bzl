"""A rule with an output directory, to exercise tree artifacts in the remote cache."""

def _generated_tree_impl(ctx):
    tree = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run_shell(
        outputs = [tree],
        command = 'mkdir -p "$1/sub" && echo one > "$1/one.txt" && echo two > "$1/sub/two.txt"',
        arguments = [tree.path],
        mnemonic = "GeneratedTree",
    )
    return [DefaultInfo(files = depset([tree]))]

generated_tree = rule(implementation = _generated_tree_impl)
