"""The bare gRPC server the gateway is measured against: ``grpc.aio``, the same
``prism.v1.KeyValueService`` methods, no interceptors, no Prism. ``GetItems``
answers with a canned response (the exact bytes the gateway answered the same
request with), ``PutItems`` with an empty one, so both servers move the same
payloads and the difference is what the gateway does in between.

``python -m benchmarks.echo_server --listen 127.0.0.1:PORT --get-response FILE``
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc

from prism.v1 import keyvalue_pb2, keyvalue_pb2_grpc


class CannedKeyValue(keyvalue_pb2_grpc.KeyValueServiceServicer):
    """Only the two methods the benchmarks call; the others answer UNIMPLEMENTED."""

    def __init__(self, get_response: keyvalue_pb2.GetItemsResponse) -> None:
        self._get = get_response
        self._put = keyvalue_pb2.PutItemsResponse()

    async def GetItems(
        self, request: keyvalue_pb2.GetItemsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> keyvalue_pb2.GetItemsResponse:
        return self._get

    async def PutItems(
        self, request: keyvalue_pb2.PutItemsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> keyvalue_pb2.PutItemsResponse:
        return self._put

    DeleteItems = keyvalue_pb2_grpc.KeyValueServiceServicer.DeleteItems
    MutateItems = keyvalue_pb2_grpc.KeyValueServiceServicer.MutateItems
    Scan = keyvalue_pb2_grpc.KeyValueServiceServicer.Scan


async def serve(listen: str, get_response: keyvalue_pb2.GetItemsResponse) -> None:
    # The gateway's own message-size limit, so large payloads are allowed alike.
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    server = grpc.aio.server(options=options)
    keyvalue_pb2_grpc.add_KeyValueServiceServicer_to_server(CannedKeyValue(get_response), server)
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo_server")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--get-response", type=Path, required=True, help="a serialized GetItemsResponse")
    args = parser.parse_args()
    response = keyvalue_pb2.GetItemsResponse.FromString(args.get_response.read_bytes())
    asyncio.run(serve(args.listen, response))


if __name__ == "__main__":
    main()
