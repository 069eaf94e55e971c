"""Module extension: Python wheels from requirements.lock, one repository per wheel.

    pypi = use_extension("//tools/pypi:extension.bzl", "pypi")
    pypi.lock(requirements = "//:requirements.in", lock = "//:requirements.lock")
    use_repo(pypi, "pypi")

`@pypi//<name>` is a py_library with the package and its dependency closure, for the target
platform's CPU (linux x86_64 or aarch64): the wheels are downloaded by URL and sha256, never
resolved or built at build time. A lock that does not match requirements.in, or was edited by
hand, makes every `@pypi//` target fail with a message naming the problem and the fix;
`@pypi//:uv` keeps working so the lock can be regenerated.
"""

PLATFORM_CONSTRAINTS = {
    "linux_aarch64": ["@platforms//os:linux", "@platforms//cpu:aarch64"],
    "linux_x86_64": ["@platforms//os:linux", "@platforms//cpu:x86_64"],
}

# Scripts of a wheel that a hub target exposes: `@pypi//:uv` is the lock tool's uv.
SCRIPTS = {"uv": ["uv"]}

REGENERATE = "Regenerate it with `tools/bazel run //:lock`."

def normalize_name(name):
    """PEP 503 name normalization, with `_` so the name is a valid Bazel target name."""
    return name.lower().replace("-", "_").replace(".", "_")

def _requirement_name(line):
    for separator in ["[", "=", "<", ">", "!", "~", ";", " ", "@"]:
        line = line.split(separator, 1)[0]
    return normalize_name(line)

def _requirement_lines(text):
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return sorted([line for line in lines if line])

def _wheel_repo_impl(rctx):
    # Only the download: wheel_library unpacks it in an action, which only tests and binaries
    # run; image layers read the .whl itself (a cold image build used to spend 20 s here
    # unpacking about 90 wheels).
    filename = rctx.attr.url.rsplit("/", 1)[-1]
    rctx.download(url = rctx.attr.url, output = filename, sha256 = rctx.attr.sha256)
    rctx.file("BUILD.bazel", """\
load("{wheel_bzl}", "wheel_library")

package(default_visibility = ["//visibility:public"])

wheel_library(
    name = "pkg",
    scripts = {scripts},
    wheel = "{filename}",
)
""".format(
        wheel_bzl = str(Label("//tools/pypi:wheel.bzl")),
        scripts = repr(["bin/" + name for name in rctx.attr.scripts]),
        filename = filename,
    ))

wheel_repo = repository_rule(
    implementation = _wheel_repo_impl,
    attrs = {
        "url": attr.string(mandatory = True),
        "sha256": attr.string(mandatory = True),
        "scripts": attr.string_list(doc = "scripts the hub exposes, installed as bin/<name>"),
    },
    doc = "One wheel, downloaded by URL and sha256, as the wheel_library `:pkg`.",
)

_LOCK_ERROR_BZL = """\
def _lock_error_impl(ctx):
    fail(ctx.attr.message)

# A target that fails analysis with a message: how an unusable lock is reported, lazily, so
# targets that do not use @pypi (the lock tool among them) keep working.
lock_error = rule(implementation = _lock_error_impl, attrs = {"message": attr.string()})
"""

def _hub_repo_impl(rctx):
    rctx.file("lock_error.bzl", _LOCK_ERROR_BZL)
    rctx.file("requirements.bzl", """\
def requirement(name):
    \"\"\"The label of a locked Python package, e.g. requirement("chromadb").\"\"\"
    return "@{hub}//" + name.lower().replace("-", "_").replace(".", "_")
""".format(hub = rctx.attr.name.split("~")[-1]))

    lines = [
        'load(":lock_error.bzl", "lock_error")',
        "",
        'package(default_visibility = ["//visibility:public"])',
        "",
    ]
    for platform, constraints in PLATFORM_CONSTRAINTS.items():
        lines.append("config_setting(name = %r, constraint_values = %r)" % (platform, constraints))
    lines.append("")

    if rctx.attr.error:
        lines.append("lock_error(name = \"lock_error\", message = %r)" % rctx.attr.error)
    for name in sorted(rctx.attr.closures):
        package = [
            'load("@rules_python//python:defs.bzl", "py_library")',
            "",
            'package(default_visibility = ["//visibility:public"])',
            "",
        ]
        if rctx.attr.error:
            package.append("alias(name = %r, actual = \"//:lock_error\")" % name)
        else:
            closure = {}
            own = {}
            for entry in rctx.attr.closures[name]:
                platform, own_repo, repos = entry.split("=")
                closure["//:" + platform] = ["@%s//:pkg" % repo for repo in repos.split(",")]
                own["//:" + platform] = "@%s//:pkg" % own_repo
            no_match = "%s has no wheel for this platform; requirements.lock has %s." % (name, ", ".join(sorted(PLATFORM_CONSTRAINTS)))
            package.append("# The package with its dependency closure.")
            package.append("py_library(name = %r, deps = select(%r, no_match_error = %r))" % (name, closure, no_match))
            package.append("")
            package.append("# The package's own wheel alone, e.g. to give a large wheel a layer of its own.")
            package.append("alias(name = \"pkg\", actual = select(%r, no_match_error = %r))" % (own, no_match))
        rctx.file(name + "/BUILD.bazel", "\n".join(package) + "\n")

    # The lock tool needs uv even when the lock is broken: that is when it is run.
    if rctx.attr.uv_repos:
        lines.append("alias(name = \"uv\", actual = select(%r))" % {
            ":" + platform: "@%s//:bin/uv" % repo
            for platform, repo in rctx.attr.uv_repos.items()
        })
    else:
        lines.append("lock_error(name = \"uv\", message = %r)" % (
            "requirements.lock has no uv wheel, so it can not regenerate itself. " +
            "Restore it with `git checkout requirements.lock`, then run `tools/bazel run //:lock`."
        ))
    rctx.file("BUILD.bazel", "\n".join(lines) + "\n")

hub_repo = repository_rule(
    implementation = _hub_repo_impl,
    attrs = {
        "closures": attr.string_list_dict(doc = "package -> [\"<platform>=<own repo>=<closure repo>,<repo>...\"]"),
        "uv_repos": attr.string_dict(doc = "platform -> repo of the uv wheel"),
        "error": attr.string(doc = "why the lock can not be used; every package target fails with it"),
    },
)

def _parse_lock(text, lock_label):
    """Returns (requirements, records, errors) of a requirements.lock."""
    requirements = None
    records = []
    errors = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        entry = json.decode(line, default = None)
        where = "%s line %d" % (lock_label, number)
        if type(entry) != "dict":
            errors.append("%s is not a JSON object" % where)
        elif "requirements" in entry:
            requirements = entry["requirements"]
        elif all([key in entry for key in ["platform", "name", "version", "url", "sha256", "deps"]]):
            if entry["platform"] not in PLATFORM_CONSTRAINTS:
                errors.append("%s names unknown platform %r" % (where, entry["platform"]))
            else:
                records.append(entry)
        else:
            errors.append("%s lacks one of platform, name, version, url, sha256, deps" % where)
    if requirements == None:
        errors.append("%s has no {\"requirements\": [...]} line" % lock_label)
    return requirements, records, errors

def _closure(name, deps_of):
    """Names reachable from `name` (Starlark has no recursion: a worklist)."""
    seen = {name: True}
    pending = [name]
    for _ in range(len(deps_of) + 1):
        if not pending:
            break
        next_pending = []
        for current in pending:
            for dep in deps_of.get(current, []):
                if dep not in seen:
                    seen[dep] = True
                    next_pending.append(dep)
        pending = next_pending
    return sorted(seen)

def _pypi_impl(mctx):
    for module in mctx.modules:
        for tag in module.tags.lock:
            _create_repos(mctx, tag)

def _create_repos(mctx, tag):
    lock_text = mctx.read(tag.lock)
    requirements, records, errors = _parse_lock(lock_text, tag.lock.name)
    wanted = _requirement_lines(mctx.read(tag.requirements))
    if requirements != None and requirements != wanted:
        errors.append("%s does not match %s (added: %s; removed: %s)" % (
            tag.lock.name,
            tag.requirements.name,
            [r for r in wanted if r not in requirements],
            [r for r in requirements if r not in wanted],
        ))

    # One repository per distinct wheel: pure-Python wheels are shared by both platforms.
    repo_of = {}  # (platform, name) -> repo name
    created = {}
    for record in records:
        name = normalize_name(record["name"])
        repo = "pypi_%s_%s" % (name, record["sha256"][:12])
        repo_of[(record["platform"], name)] = repo
        if repo not in created:
            created[repo] = True
            wheel_repo(
                name = repo,
                url = record["url"],
                sha256 = record["sha256"],
                scripts = SCRIPTS.get(name, []),
            )

    closures = {}
    for platform in PLATFORM_CONSTRAINTS:
        deps_of = {}
        for record in records:
            if record["platform"] == platform:
                deps_of[normalize_name(record["name"])] = [normalize_name(d) for d in record["deps"]]
        for requirement in (requirements or []):
            if (platform, _requirement_name(requirement)) not in repo_of:
                errors.append("%s has no %s wheel for requirement %r" % (tag.lock.name, platform, requirement))
        for name in sorted(deps_of):
            members = _closure(name, deps_of)
            missing = [m for m in members if (platform, m) not in repo_of]
            if missing:
                errors.append("%s: %s on %s needs %s, which the lock does not list" % (
                    tag.lock.name,
                    name,
                    platform,
                    ", ".join(missing),
                ))
                continue
            closures.setdefault(name, []).append("%s=%s=%s" % (
                platform,
                repo_of[(platform, name)],
                ",".join([repo_of[(platform, m)] for m in members]),
            ))

    if errors:
        # Every package still gets a target, one that fails with the reason when used.
        names = [normalize_name(r["name"]) for r in records] + [_requirement_name(r) for r in wanted]
        closures = {name: [] for name in names}

    hub_repo(
        name = tag.hub_name,
        closures = closures,
        uv_repos = {
            platform: repo_of[(platform, "uv")]
            for platform in PLATFORM_CONSTRAINTS
            if (platform, "uv") in repo_of
        },
        error = "" if not errors else "requirements.lock can not be used:\n  " + "\n  ".join(errors) + "\n" + REGENERATE,
    )

pypi = module_extension(
    implementation = _pypi_impl,
    tag_classes = {
        "lock": tag_class(attrs = {
            "requirements": attr.label(mandatory = True),
            "lock": attr.label(mandatory = True),
            "hub_name": attr.string(default = "pypi"),
        }),
    },
)
