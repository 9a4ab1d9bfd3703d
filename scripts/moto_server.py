"""moto's DynamoDB and SQS emulation over HTTP, with every request serialised.

Usage: python scripts/moto_server.py HOST PORT

Why not plain `moto_server`: it runs Werkzeug with threaded=True and takes
no lock per request. Two conditional writes that run at the same time can
then both pass their condition checks. In a test, 8 writers racing with
conditional TransactWriteItems lost messages in 3 of 4 runs, and a
conditional PutItem (attribute_not_exists) succeeded 41 times for 40 keys.
AWS never does that, so tests of the sequence guarantee and the rate limit
would fail at random because of the emulator. Here one global lock wraps
moto's WSGI app, so it handles one request at a time. Connections are still
accepted on threads, so clients do not queue at the socket. The response
body is read inside the lock, because moto may build it lazily.

The endpoint is the usual moto server: the AWS APIs at /, and
/moto-api/data.json, which answers once the server is up.
"""

import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.sqs.models import Queue
from werkzeug.serving import run_simple


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: moto_server.py HOST PORT")
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ, start_response):
        with lock:
            return list(app(environ, start_response))

    # A long-polling ReceiveMessage (WaitTimeSeconds > 0) on an empty queue
    # waits inside moto, in Queue.wait_for_messages, between two scans of
    # the queue. Holding the lock there would stop every other request for
    # the whole wait: the local server's fan-out loop long-polls all the
    # time, so each of its requests would take about 2 s. The wait touches
    # no state (it sleeps until SendMessage notifies or 1 s passes), so it
    # gives the lock up; the scans around it still run under the lock.
    wait_for_messages = Queue.wait_for_messages

    def wait_unlocked(queue, timeout):
        lock.release()
        try:
            wait_for_messages(queue, timeout)
        finally:
            lock.acquire()

    Queue.wait_for_messages = wait_unlocked

    run_simple(
        host,
        port,
        serialised,
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
