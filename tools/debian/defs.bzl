"""debian_rootfs: a normalized root file system tar from Debian .deb files;
debian_rootfs_per_cpu: one for each CPU, and the target platform's."""

def _debian_rootfs_impl(ctx):
    output = ctx.actions.declare_file(ctx.attr.name + ".tar")
    args = ctx.actions.args()
    args.add("--arch", ctx.attr.arch)
    args.add("--output", output)
    for link, target in sorted(ctx.attr.symlinks.items()):
        args.add("--symlink", "%s=%s" % (link, target))
    args.add_all(ctx.attr.directories, before_each = "--directory")
    args.add_all(ctx.attr.compile_python, before_each = "--compile-python")
    args.add_all(ctx.files.debs)
    ctx.actions.run(
        executable = ctx.executable._tool,
        arguments = [args],
        inputs = ctx.files.debs,
        outputs = [output],
        mnemonic = "DebianRootfs",
        progress_message = "Assembling the %s root file system %%{label}" % ctx.attr.arch,
    )
    return [DefaultInfo(files = depset([output]))]

debian_rootfs = rule(
    implementation = _debian_rootfs_impl,
    doc = """Unpacks .deb files (no maintainer scripts) into `<name>.tar`: sorted entries, mtime 0,
uid/gid 0, modes readable by anyone, documentation dropped except copyright files, merged /usr,
/var/lib/dpkg/status.d entries for scanners, the CA bundle, /etc/passwd and /etc/group with root
and nonroot (65532), /tmp.""",
    attrs = {
        "debs": attr.label_list(allow_files = [".deb"], mandatory = True, doc = "the packages, e.g. @debian//:arm64"),
        "arch": attr.string(mandatory = True, doc = "Debian architecture of the packages: amd64, arm64"),
        "symlinks": attr.string_dict(doc = "extra symbolic links: path -> target"),
        "directories": attr.string_list(doc = "extra empty directories, e.g. /var/task"),
        "compile_python": attr.string_list(
            doc = "library directories (e.g. /usr/lib/python3.13) to add .pyc files to; the build's " +
                  "Python must be that version",
        ),
        "_tool": attr.label(default = "//tools/debian:rootfs", executable = True, cfg = "exec"),
    },
)

def debian_rootfs_per_cpu(name, packages, **kwargs):
    """`<name>_amd64` and `<name>_arm64`, debian_rootfs of `packages` (a debian lock's hub
    repository, e.g. "@debian", whose `:amd64` and `:arm64` are the packages), and `<name>`: the
    one for the target platform's CPU. Other arguments go to both debian_rootfs targets."""
    for arch in ("amd64", "arm64"):
        debian_rootfs(
            name = "%s_%s" % (name, arch),
            arch = arch,
            debs = ["%s//:%s" % (packages, arch)],
            **kwargs
        )
    native.alias(
        name = name,
        actual = select({
            "@platforms//cpu:aarch64": ":%s_arm64" % name,
            "@platforms//cpu:x86_64": ":%s_amd64" % name,
        }),
    )
