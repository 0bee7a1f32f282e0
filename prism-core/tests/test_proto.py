"""The generated prism.v1 code loads with the installed protobuf and grpcio, and
its services are the ones the gateway implements."""

from __future__ import annotations

from google.protobuf import duration_pb2

from prism.v1 import admin_pb2, common_pb2, counter_pb2, keyvalue_pb2, queue_pb2, timeseries_pb2


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
    assert _methods(timeseries_pb2, "TimeSeriesService") == ["WriteEvents", "ReadEvents"]
    assert _methods(counter_pb2, "CounterService") == ["Add", "Get", "Clear"]
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


def test_counter_values_and_deltas_keep_presence_and_the_full_int64_range() -> None:
    token = common_pb2.IdempotencyToken(nonce="n")
    request = counter_pb2.AddRequest(namespace="c", counter="x", delta=-(2**63), token=token)
    again = counter_pb2.AddRequest.FromString(request.SerializeToString())
    assert again.HasField("delta")
    assert again.delta == -(2**63)
    assert not counter_pb2.AddRequest(namespace="c", counter="x").HasField("delta")
    assert not counter_pb2.AddResponse().HasField("value")
    zero = counter_pb2.AddResponse.FromString(counter_pb2.AddResponse(value=0).SerializeToString())
    assert zero.HasField("value")
    assert zero.value == 0


def test_existing_admin_field_numbers_are_unchanged() -> None:
    """New abstractions are added fields; a renumbered field would break every
    client built from the earlier admin.proto."""
    namespace = admin_pb2.Namespace.DESCRIPTOR.fields_by_name
    assert {
        name: namespace[name].number for name in ("limits", "queue", "traits", "runtime", "pinned_backend")
    } == {
        "limits": 8,
        "queue": 9,
        "traits": 10,
        "runtime": 11,
        "pinned_backend": 12,
    }
    assert (namespace["timeseries"].number, namespace["counter"].number) == (13, 14)
    create = admin_pb2.CreateNamespaceRequest.DESCRIPTOR.fields_by_name
    assert (create["queue"].number, create["timeseries"].number, create["counter"].number) == (6, 7, 8)
    assert (admin_pb2.ABSTRACTION_QUEUE, admin_pb2.ABSTRACTION_TIMESERIES, admin_pb2.ABSTRACTION_COUNTER) == (
        2,
        3,
        4,
    )
    event = timeseries_pb2.Event.DESCRIPTOR.fields_by_name["event_time"]
    assert event.message_type.full_name == "google.protobuf.Timestamp"
