"""A gRPC client not written for geokv: Python's grpcio, stubs generated
from geokv's protos at run time, no router.

    python generic_client.py PROTO_DIR ENDPOINT [ENDPOINT...]

Through every node, leader or not: the standard health service says
SERVING, server reflection lists geokv's services, and puts and gets work
(a node that does not lead the key's shard forwards the request). A request
that names a shard (as geokv's own client does) to a node that does not
lead it is answered NOT_LEADER, with the leader's address in the standard
google.rpc.ErrorInfo of the status details. Prints one JSON object with
what it saw; exits non-zero on the first failure.
"""

import importlib
import json
import sys
import tempfile

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc


def stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="geokv-py-")
    code = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", "kv.proto"])
    if code != 0:
        raise SystemExit(f"protoc failed on {proto_dir}/kv.proto")
    sys.path.insert(0, out)
    return importlib.import_module("kv_pb2"), importlib.import_module("kv_pb2_grpc")


def error_info(err):
    """The google.rpc.ErrorInfo in a failed call's status details."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    return None


def main():
    proto_dir, endpoints = sys.argv[1], sys.argv[2:]
    kv_pb2, kv_grpc = stubs(proto_dir)
    report = {"nodes": {}, "not_leader": None}
    channels = {e: grpc.insecure_channel(e) for e in endpoints}
    for endpoint, channel in channels.items():
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = sorted(s.name for a in answers for s in a.list_services_response.service)
        report["nodes"][endpoint] = {
            "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
            "services": services,
        }
    # Puts through every node, each key read back through every node.
    for i, (endpoint, channel) in enumerate(channels.items()):
        for key in (f"a/py-{i}", f"h/py-{i}", f"p/py-{i}", f"w/py-{i}"):
            value = f"from {endpoint}".encode()
            kv_grpc.KvStub(channel).Put(kv_pb2.PutRequest(key=key.encode(), value=value), timeout=10)
            for reader, rc in channels.items():
                got = kv_grpc.KvStub(rc).Get(kv_pb2.GetRequest(key=key.encode()), timeout=10)
                if got.kv.value != value:
                    raise SystemExit(f"{key} written at {endpoint} reads {got.kv.value!r} at {reader}")
                report["nodes"][reader].setdefault("served_by", set()).add(got.read.node_id)
        report["nodes"][endpoint]["puts"] = 4
    # A request that names its shard is not forwarded: NOT_LEADER, with the
    # leader in the standard ErrorInfo.
    for endpoint, channel in channels.items():
        try:
            shard = kv_grpc.KvStub(channel).Put(kv_pb2.PutRequest(key=b"h/py-probe", value=b"x"), timeout=10).shard_id
            header = kv_pb2.RequestHeader(shard_id=shard)
            kv_grpc.KvStub(channel).Put(kv_pb2.PutRequest(header=header, key=b"h/py-probe", value=b"y"), timeout=10)
        except grpc.RpcError as err:
            info = error_info(err)
            report["not_leader"] = {
                "at": endpoint,
                "code": err.code().name,
                "reason": info.reason if info else None,
                "domain": info.domain if info else None,
                "metadata": dict(info.metadata) if info else None,
            }
            break
    for node in report["nodes"].values():
        node["served_by"] = sorted(node.get("served_by", ()))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
