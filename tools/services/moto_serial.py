"""``python tools/services/moto_serial.py HOST PORT``: moto's DynamoDB server
answering one request at a time.

moto's own ``moto_server`` runs each request on a thread, and its DynamoDB
model is not safe under that: concurrent ``UpdateItem ... ADD`` calls lose
increments, and ``TransactWriteItems`` copies and restores whole tables, so a
cancelled transaction erases concurrent writes. On real DynamoDB each of those
requests is atomic. Serving requests one after the other makes moto behave
the same way, so a test of atomic behaviour tests the plugin, not moto's
threading. Without threads werkzeug speaks HTTP/1.0 and closes each
connection, so no idle keep-alive connection can hold the server.
"""

from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def main(argv: list[str]) -> None:
    host, port = argv[0], int(argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, app, threaded=False, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1:])
