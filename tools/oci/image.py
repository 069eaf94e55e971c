"""Writes an image's config and manifest from layer metadata files, or an image index from image descriptors.

`image` reads only small files: the base image's manifest and config (optional) and the
metadata JSON of each new layer (see layer.py). Layer blobs are never read or copied,
so assembling an image costs milliseconds whatever its size.

`index` combines single-platform images (their descriptor files) into a multi-arch index.
"""

import argparse
import json
import re

from tools.oci import common

# Layer media types are the same bytes under either manifest format; only the names differ.
TO_DOCKER = {
    common.OCI_LAYER_GZIP: common.DOCKER_LAYER_GZIP,
    common.OCI_LAYER_TAR: "application/vnd.docker.image.rootfs.diff.tar",
}
TO_OCI = {docker: oci for oci, docker in TO_DOCKER.items()}
FORMATS = {
    "oci": {
        "manifest": common.OCI_MANIFEST,
        "config": common.OCI_CONFIG,
        "index": common.OCI_INDEX,
    },
    "docker": {
        "manifest": common.DOCKER_MANIFEST,
        "config": common.DOCKER_CONFIG,
        "index": common.DOCKER_MANIFEST_LIST,
    },
}
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand_env(base_env, new_env):
    """Docker-style ENV: new values may use $NAME or ${NAME} of variables already set; order is kept."""
    env = dict(item.split("=", 1) if "=" in item else (item, "") for item in base_env)
    for name, value in new_env:
        if not name or "=" in name:
            raise common.UsageError(
                f"env name {name!r} is invalid: names must be non-empty and contain no '='"
            )

        def substitute(match):
            variable = match.group(1) or match.group(2)
            return env.get(variable, match.group(0))

        env[name] = _VARIABLE.sub(substitute, value)
    return [f"{name}={value}" for name, value in env.items()]


def layer_media_type(media_type, manifest_format):
    if manifest_format == "docker":
        if media_type in TO_DOCKER.values():
            return media_type
        if media_type not in TO_DOCKER:
            raise common.UsageError(
                f"layer media type {media_type} has no Docker v2 equivalent (zstd needs OCI); "
                'use format = "oci" or gzip layers'
            )
        return TO_DOCKER[media_type]
    return TO_OCI.get(media_type, media_type)


def _history_for_base(config, created):
    """Base history, or one entry per base layer when it is missing or does not match the layers."""
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    history = config.get("history", [])
    if sum(1 for entry in history if not entry.get("empty_layer")) == len(diff_ids):
        return list(history)
    return [
        {"created": created, "created_by": "layer of the base image"} for _ in diff_ids
    ]


def _platform(args, base_config):
    platform = {}
    for field in ("os", "architecture", "variant"):
        wanted, inherited = getattr(args, field), base_config.get(field)
        if wanted and inherited and wanted != inherited:
            raise common.UsageError(
                f"{field} = {wanted!r} but the base image is {inherited!r}; "
                f"pick a base built for {wanted} or drop the {field} attribute"
            )
        if wanted or inherited:
            platform[field] = wanted or inherited
    for field in ("os", "architecture"):
        if field not in platform:
            raise common.UsageError(
                f"the image has no {field}: set the {field} attribute (e.g. linux, arm64)"
            )
    return platform


def build_image(args):
    epoch = common.source_date_epoch()
    created = common.rfc3339(epoch)
    base_config = (
        common.read_json(args.base_config, "base config") if args.base_config else {}
    )
    base_manifest = (
        common.read_json(args.base_manifest, "base manifest")
        if args.base_manifest
        else {}
    )
    if bool(base_config) != bool(base_manifest):
        raise common.UsageError(
            "a base image needs both --base-manifest and --base-config"
        )
    base_layers = base_manifest.get("layers", [])
    base_diff_ids = base_config.get("rootfs", {}).get("diff_ids", [])
    if len(base_layers) != len(base_diff_ids):
        raise common.UsageError(
            f"the base manifest lists {len(base_layers)} layers but its config {len(base_diff_ids)} diff_ids"
        )
    layers = [common.read_json(path, "layer metadata") for path in args.layer]
    platform = _platform(args, base_config)

    settings = dict(base_config.get("config") or {})
    if args.entrypoint is not None:
        settings["Entrypoint"] = args.entrypoint
        if args.cmd is None:
            settings.pop(
                "Cmd", None
            )  # as in a Dockerfile, a new ENTRYPOINT drops the base's CMD
    if args.cmd is not None:
        settings["Cmd"] = args.cmd
    if args.env:
        settings["Env"] = expand_env(settings.get("Env") or [], args.env.items())
    if args.workdir:
        settings["WorkingDir"] = args.workdir
    if args.user:
        settings["User"] = args.user
    if args.labels:
        settings["Labels"] = {**(settings.get("Labels") or {}), **args.labels}

    config = {
        key: value for key, value in base_config.items() if key not in ("variant",)
    }
    config.update(platform)
    config["created"] = created
    config["config"] = settings
    config["rootfs"] = {
        "type": "layers",
        "diff_ids": base_diff_ids + [layer["diff_id"] for layer in layers],
    }
    config["history"] = _history_for_base(base_config, created) + [
        {**layer["history"], "created": created} for layer in layers
    ]
    config_bytes = common.canonical_json(config)

    media_types = FORMATS[args.format]
    descriptors = base_layers + [layer["descriptor"] for layer in layers]
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_types["manifest"],
        "config": {
            "mediaType": media_types["config"],
            "digest": common.sha256_digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                **descriptor,
                "mediaType": layer_media_type(descriptor["mediaType"], args.format),
            }
            for descriptor in descriptors
        ],
    }
    if args.annotations:
        if args.format == "docker":
            raise common.UsageError(
                'Docker v2 manifests have no annotations; use format = "oci" or drop them'
            )
        manifest["annotations"] = args.annotations
    manifest_bytes = common.canonical_json(manifest)
    descriptor = {
        "mediaType": manifest["mediaType"],
        "digest": common.sha256_digest(manifest_bytes),
        "size": len(manifest_bytes),
        "platform": platform,
    }
    common.write_atomically(args.output_config, config_bytes)
    common.write_atomically(args.output_manifest, manifest_bytes)
    _write_descriptor(args, descriptor)


def build_index(args):
    descriptors = [common.read_json(path, "image descriptor") for path in args.image]
    platforms = [
        common.canonical_json(descriptor.get("platform", {}))
        for descriptor in descriptors
    ]
    duplicates = {platform for platform in platforms if platforms.count(platform) > 1}
    if duplicates:
        raise common.UsageError(
            f"several images of the index have the platform {min(duplicates).decode()}; "
            "give each platform one image"
        )
    index = {
        "schemaVersion": 2,
        "mediaType": FORMATS[args.format]["index"],
        "manifests": descriptors,
    }
    if args.annotations:
        index["annotations"] = args.annotations
    index_bytes = common.canonical_json(index)
    common.write_atomically(args.output_index, index_bytes)
    _write_descriptor(
        args,
        {
            "mediaType": index["mediaType"],
            "digest": common.sha256_digest(index_bytes),
            "size": len(index_bytes),
        },
    )


def _write_descriptor(args, descriptor):
    common.write_atomically(
        args.output_descriptor, common.canonical_json(descriptor) + b"\n"
    )
    common.write_atomically(args.output_digest, descriptor["digest"].encode())


# Values arrive JSON-encoded: one line each in Bazel's param file, whatever characters they hold.
def _json_list(text):
    value = _json_or_none(text)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a JSON list of strings, e.g. \'["/bin/app", "-v"]\''
        )
    return value


def _json_string_dict(text):
    value = _json_or_none(text)
    if not isinstance(value, dict) or not all(
        isinstance(item, str) for item in value.values()
    ):
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a JSON object of strings, e.g. \'{{"KEY": "value"}}\''
        )
    return value


def _json_or_none(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    image = commands.add_parser("image", help="config + manifest of one image")
    image.add_argument("--base-manifest")
    image.add_argument("--base-config")
    image.add_argument(
        "--layer",
        action="append",
        default=[],
        help="a layer metadata JSON from layer.py",
    )
    image.add_argument("--entrypoint", type=_json_list)
    image.add_argument("--cmd", type=_json_list)
    image.add_argument(
        "--env",
        type=_json_string_dict,
        default={},
        help='JSON object, e.g. {"LANG": "C.UTF-8"}',
    )
    image.add_argument(
        "--labels", type=_json_string_dict, default={}, help="JSON object"
    )
    image.add_argument("--workdir", default="")
    image.add_argument("--user", default="")
    image.add_argument("--os", default="")
    image.add_argument("--architecture", default="")
    image.add_argument("--variant", default="")
    image.add_argument("--output-config", required=True)
    image.add_argument("--output-manifest", required=True)

    index = commands.add_parser("index", help="a multi-platform image index")
    index.add_argument(
        "--image", action="append", default=[], help="an image descriptor JSON"
    )
    index.add_argument("--output-index", required=True)

    for command in (image, index):
        command.add_argument(
            "--annotations", type=_json_string_dict, default={}, help="JSON object"
        )
        command.add_argument("--format", choices=sorted(FORMATS), default="oci")
        command.add_argument("--output-descriptor", required=True)
        command.add_argument("--output-digest", required=True)
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if args.command == "image":
        build_image(args)
    else:
        build_index(args)


if __name__ == "__main__":
    common.run_main(main)
