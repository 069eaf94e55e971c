"""Real servers for the push and pull tests (docker-registry with htpasswd or token auth, a token
server, a fault-injecting proxy, moto's ECR) and small OCI image layouts, one module per job."""

from tests.push.support.auth import TokenServer, docker_config, htpasswd_line
from tests.push.support.faults import BlobStore, Fault, FaultProxy
from tests.push.support.images import (
    HANDLERS,
    BuiltImage,
    HandlerImages,
    image_args,
    layer_bytes,
    write_image,
)
from tests.push.support.serving import (
    RunningRegistry,
    refused_port,
    registry,
    require_tool,
    skopeo_copy,
)

__all__ = [
    "HANDLERS",
    "BlobStore",
    "BuiltImage",
    "Fault",
    "FaultProxy",
    "HandlerImages",
    "RunningRegistry",
    "TokenServer",
    "docker_config",
    "htpasswd_line",
    "image_args",
    "layer_bytes",
    "refused_port",
    "registry",
    "require_tool",
    "skopeo_copy",
    "write_image",
]
