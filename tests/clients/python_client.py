"""A third-party client of the control API: Python grpcio stubs generated from
proto/switchyard/v1 at test time. Prints what it saw as one JSON object.

usage: python_client.py CONTROL_ADDRESS PROTO_DIR
"""

import json
import os
import subprocess
import sys
import tempfile

address, proto_dir = sys.argv[1], sys.argv[2]
out = tempfile.mkdtemp()
protos = [os.path.join("switchyard/v1", name) for name in ("catalog.proto", "mapping.proto", "replay.proto")]
subprocess.run(
    [sys.executable, "-m", "grpc_tools.protoc", "-I", proto_dir, f"--python_out={out}", f"--grpc_python_out={out}", *protos],
    check=True,
)
sys.path.insert(0, out)

import grpc  # noqa: E402
from switchyard.v1 import catalog_pb2, catalog_pb2_grpc  # noqa: E402
from switchyard.v1 import mapping_pb2, mapping_pb2_grpc  # noqa: E402
from switchyard.v1 import replay_pb2, replay_pb2_grpc  # noqa: E402

channel = grpc.insecure_channel(address)
catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
mappings = mapping_pb2_grpc.MappingServiceStub(channel)
replays = replay_pb2_grpc.ReplayServiceStub(channel)
seen = {}

bundle = """
mappings:
  - name: python-made
    version: 1
    program: '. = {"from": "python", "id": .id}'
"""
plan = catalog.Apply(catalog_pb2.ApplyRequest(document=bundle, dry_run=True))
seen["plan"] = [(change.name, catalog_pb2.ChangeAction.Name(change.action)) for change in plan.changes]
catalog.Apply(catalog_pb2.ApplyRequest(document=bundle))
listed = catalog.ListResources(catalog_pb2.ListResourcesRequest(kind=catalog_pb2.RESOURCE_KIND_MAPPING))
seen["mappings"] = sorted(resource.name for resource in listed.resources)

tested = mappings.TestMapping(mapping_pb2.TestMappingRequest(reference="python-made@1", sample='{"id": 7}'))
seen["test"] = {"passed": tested.passed, "output": json.loads(tested.output)}

try:
    catalog.Apply(catalog_pb2.ApplyRequest(document="routes:\n  - name: r\n    source: nowhere\n    mapping: python-made@1\n    provider: crm\n"))
    seen["invalid"] = None
except grpc.RpcError as err:
    seen["invalid"] = {"code": err.code().name, "details": err.details()}

last = None
for progress in replays.Replay(replay_pb2.ReplayRequest(source="shop", dry_run=True)):
    last = progress
seen["replay"] = {"done": last.done, "dry_run": last.dry_run, "scanned": last.scanned}

print(json.dumps(seen))
