"""The generated prism.v1 code loads with the installed protobuf and grpcio, and
its services are the ones the gateway implements."""

from __future__ import annotations

from google.protobuf import duration_pb2

from prism.v1 import admin_pb2, keyvalue_pb2, queue_pb2


def _methods(module: object, service: str) -> list[str]:
    descriptor = module.DESCRIPTOR.services_by_name[service]  # type: ignore[attr-defined]
    return [method.name for method in descriptor.methods]


def test_services_and_methods() -> None:
    assert _methods(keyvalue_pb2, "KeyValueService") == [
        "PutItems",
        "GetItems",
        "DeleteItems",
        "MutateItems",
        "Scan",
    ]
    assert _methods(queue_pb2, "QueueService") == ["Publish", "Consume", "Subscribe", "Ack", "Nack"]
    assert _methods(admin_pb2, "AdminService") == ["ListNamespaces", "GetPlan", "CreateNamespace"]
    subscribe = queue_pb2.DESCRIPTOR.services_by_name["QueueService"].methods_by_name["Subscribe"]
    assert subscribe.server_streaming
    assert not subscribe.client_streaming


def test_messages_round_trip_bytes_exactly() -> None:
    request = queue_pb2.PublishRequest(
        namespace="orders",
        topic="created",
        messages=[
            queue_pb2.Message(
                key=b"\x00k",
                payload=b"\xff" * 3,
                headers={"trace": b"\x01"},
                deliver_after=duration_pb2.Duration(seconds=5),
            )
        ],
    )
    again = queue_pb2.PublishRequest.FromString(request.SerializeToString())
    assert again == request
    assert again.messages[0].headers["trace"] == b"\x01"
    assert again.messages[0].HasField("deliver_after")
    assert not again.messages[0].HasField("deliver_at")
    predicate = keyvalue_pb2.Predicate(range=keyvalue_pb2.KeyRange(start=b""))
    assert predicate.WhichOneof("match") == "range"
    assert predicate.range.HasField("start")
    assert not predicate.range.HasField("end")
