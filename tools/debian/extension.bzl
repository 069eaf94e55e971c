"""Module extension: the Debian packages pinned in base/debian.lock, one repository per .deb.

    debian = use_extension("//tools/debian:extension.bzl", "debian")
    debian.lock(lock = "//base:debian.lock", packages = "//base:debian_packages.in")
    use_repo(debian, "debian")

`@debian//:amd64` and `@debian//:arm64` are filegroups of the .deb files of each architecture,
downloaded by URL and sha256 (nothing is resolved at build time). A lock that no longer matches
its package list, or that is malformed, turns both targets into errors that say how to
regenerate it; nothing is downloaded then.
"""

REGENERATE = "Regenerate it with `tools/bazel run //tools/debian:lock`."

def _deb_repo_impl(rctx):
    rctx.download(url = rctx.attr.url, output = "package.deb", sha256 = rctx.attr.sha256)
    rctx.file("BUILD.bazel", 'exports_files(["package.deb"], visibility = ["//visibility:public"])\n')

deb_repo = repository_rule(
    implementation = _deb_repo_impl,
    attrs = {
        "url": attr.string(mandatory = True),
        "sha256": attr.string(mandatory = True),
    },
    doc = "One .deb file, downloaded by URL and checked against its sha256.",
)

def _hub_repo_impl(rctx):
    lines = [
        'load("@//tools/debian:lock_error.bzl", "lock_error")',
        "",
        'package(default_visibility = ["//visibility:public"])',
        "",
    ]
    for arch in sorted(rctx.attr.architectures):
        repos = rctx.attr.architectures[arch]
        if rctx.attr.error:
            lines.append("lock_error(name = %r, message = %r)" % (arch, rctx.attr.error))
        else:
            lines.append("filegroup(name = %r, srcs = %r)" % (arch, ["@%s//:package.deb" % repo for repo in repos]))
    rctx.file("BUILD.bazel", "\n".join(lines) + "\n")

hub_repo = repository_rule(
    implementation = _hub_repo_impl,
    attrs = {
        "architectures": attr.string_list_dict(doc = "architecture -> repositories of its .deb files"),
        "error": attr.string(doc = "why the lock can not be used; every target fails with it"),
    },
)

def package_names(text):
    """The package names of a debian_packages.in, sorted, as lock.py reads them."""
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return sorted([name for name in names if name])

def repo_name(hub, arch, package):
    safe = "".join([c if c.isalnum() or c in "-._" else "_" for c in package.elems()])
    return "%s_%s_%s" % (hub, arch, safe)

def _lock_problem(lock, inputs, lock_label, packages_label):
    """Why `lock` can not be used, or None."""
    if type(lock) != "dict" or type(lock.get("packages")) != "dict" or "inputs" not in lock:
        return "%s is not a Debian lock written by tools/debian/lock.py. %s" % (lock_label, REGENERATE)
    if lock["inputs"] != inputs:
        added = [name for name in inputs if name not in lock["inputs"]]
        removed = [name for name in lock["inputs"] if name not in inputs]
        return "%s is stale: %s adds %s and removes %s. %s" % (
            lock_label,
            packages_label,
            ", ".join(added) or "nothing",
            ", ".join(removed) or "nothing",
            REGENERATE,
        )
    for arch, entries in lock["packages"].items():
        for entry in entries:
            if type(entry) != "dict" or not all([key in entry for key in ["name", "url", "sha256"]]):
                return "%s has a malformed %s entry: %r. %s" % (lock_label, arch, entry, REGENERATE)
            if len(entry["sha256"]) != 64 or not entry["url"].startswith(("http://", "https://")):
                return "%s pins %s (%s) without a URL and sha256. %s" % (lock_label, entry["name"], arch, REGENERATE)
    return None

def _path(label):
    return label.package + "/" + label.name if label.package else label.name

def _debian_impl(mctx):
    for module in mctx.modules:
        for tag in module.tags.lock:
            lock = json.decode(mctx.read(tag.lock), default = None)
            inputs = package_names(mctx.read(tag.packages))
            error = _lock_problem(lock, inputs, _path(tag.lock), _path(tag.packages))
            architectures = {}
            if not error:
                for arch, entries in sorted(lock["packages"].items()):
                    repos = []
                    for entry in entries:
                        name = repo_name(tag.name, arch, entry["name"])
                        if name in repos:
                            fail("%s: two %s packages map to the repository name %s" % (tag.lock, arch, name))
                        deb_repo(name = name, url = entry["url"], sha256 = entry["sha256"])
                        repos.append(name)
                    architectures[arch] = repos
            else:
                architectures = {"amd64": [], "arm64": []}
            hub_repo(name = tag.name, architectures = architectures, error = error or "")

debian = module_extension(
    implementation = _debian_impl,
    tag_classes = {
        "lock": tag_class(attrs = {
            "name": attr.string(default = "debian", doc = "name of the hub repository"),
            "lock": attr.label(mandatory = True, doc = "the lock written by tools/debian/lock.py"),
            "packages": attr.label(mandatory = True, doc = "the package list the lock was made from"),
        }),
    },
)
