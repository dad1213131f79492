"""A small CRI client (crictl is not packaged in Debian): `PullImage` over containerd's socket."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import grpc
import pytest

PROTO = Path(__file__).with_name("cri.proto")


def load_messages(output_dir: Path) -> ModuleType:
    """`cri.proto` compiled with grpcio-tools into `output_dir` and imported."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    if protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={output_dir}", str(PROTO)]) != 0:
        raise AssertionError("protoc failed on cri.proto")
    spec = importlib.util.spec_from_file_location("cri_pb2", output_dir / "cri_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pull_image(messages: ModuleType, containerd_socket: str, image: str, timeout_s: float = 120) -> str:
    """CRI `PullImage` of `image`; returns the image ref containerd answers."""
    with grpc.insecure_channel(f"unix:{containerd_socket}") as channel:
        call = channel.unary_unary(
            "/runtime.v1.ImageService/PullImage",
            request_serializer=messages.PullImageRequest.SerializeToString,
            response_deserializer=messages.PullImageResponse.FromString,
        )
        request = messages.PullImageRequest(image=messages.ImageSpec(image=image))
        return str(call(request, timeout=timeout_s).image_ref)
