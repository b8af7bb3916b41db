"""The stripe SDK's HTTP transport for the Stripe connector: http.client with one kept-alive connection per thread.

The SDK lets a program bring its own HTTP client (stripe.HTTPClient: "Base HTTP client that custom
clients can inherit from"). Its default, requests, costs about twice the CPU per call of plain
http.client (sessions, adapters, urllib3's pool, environment and ~/.netrc reads on every request); a
lane making hundreds of calls a second in one Python process is bound by exactly that CPU. Requests
and answers are the SDK's own: it builds the request (headers, Idempotency-Key, form body), this module
only carries bytes, and the SDK reads the answer.

- One connection per thread and address, kept alive. Before a connection is reused it is checked
  for a close from the server while idle (readable with nothing to read), and opened again if so,
  so a request is never written to a connection the server has already closed.
- HTTPS is verified against the SDK's CA bundle (stripe.ca_bundle_path), as its own clients do.
- Any failure to send or to read the whole answer is stripe.APIConnectionError (the SDK's own type),
  and the connection is dropped: the connector classifies it as connection_error or timeout, and the
  transfer processor's quick retries send it again under the same idempotency key.
- A proxy is not spoken here: when HTTPS_PROXY / HTTP_PROXY (and not NO_PROXY) apply to the API's
  address, client_for() returns the SDK's requests client with those proxies instead.
"""

from __future__ import annotations

import http.client
import io
import select
import ssl
import threading
import urllib.parse
from typing import Any, Mapping

import requests
import stripe

MAX_CONNECTIONS = 256  # requests' pool size in the proxy case (runtime/settings: at most 256 calls in flight)


class KeptAliveClient(stripe.HTTPClient):
    name = "http.client"

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self._timeout_s = timeout_s
        self._tls = ssl.create_default_context(cafile=stripe.ca_bundle_path)
        self._local = threading.local()

    def request(self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None,
                *, _usage: Any = None) -> tuple[bytes, int, dict[str, str]]:
        split = urllib.parse.urlsplit(url)
        where = (split.scheme, split.hostname or "", split.port)
        path = (split.path or "/") + (f"?{split.query}" if split.query else "")
        body = post_data.encode("utf-8") if isinstance(post_data, str) else post_data
        connection = self._connection(where)
        try:
            connection.request(method.upper(), path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as exc:  # timeouts (TimeoutError) are OSErrors
            self._drop(where)
            raise stripe.APIConnectionError(
                f"Unexpected error communicating with Stripe.\n\n(Network error: {type(exc).__name__}: "
                f"{exc or 'no answer'})", should_retry=True) from exc
        if response.will_close:
            self._drop(where)
        return content, response.status, {name.lower(): value for name, value in response.getheaders()}

    def request_stream(self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None,
                       *, _usage: Any = None) -> tuple[io.BytesIO, int, dict[str, str]]:
        content, status, answer_headers = self.request(method, url, headers, post_data)
        return io.BytesIO(content), status, answer_headers

    def close(self) -> None:
        for where in list(self._connections()):
            self._drop(where)

    def _connections(self) -> dict:
        found = getattr(self._local, "connections", None)
        if found is None:
            found = self._local.connections = {}
        return found

    def _connection(self, where: tuple[str, str, int | None]) -> http.client.HTTPConnection:
        connections = self._connections()
        connection = connections.get(where)
        if connection is not None and connection.sock is not None and _closed_by_server(connection.sock):
            self._drop(where)
            connection = None
        if connection is None:
            scheme, host, port = where
            if scheme == "https":
                connection = http.client.HTTPSConnection(host, port, timeout=self._timeout_s, context=self._tls)
            else:
                connection = http.client.HTTPConnection(host, port, timeout=self._timeout_s)
            connections[where] = connection
        return connection

    def _drop(self, where: tuple[str, str, int | None]) -> None:
        connection = self._connections().pop(where, None)
        if connection is not None:
            connection.close()


def _closed_by_server(sock: Any) -> bool:
    """An idle kept-alive connection that is readable has been closed (or reset) by the server."""
    try:
        poller = select.poll()  # not select(): no limit on the descriptor's number
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def client_for(api_base: str, timeout_s: float) -> stripe.HTTPClient:
    """KeptAliveClient, or the SDK's requests client when the environment names a proxy for the API."""
    found = requests.utils.get_environ_proxies(api_base)  # {} when NO_PROXY covers it
    proxies = {scheme: found[scheme] for scheme in ("http", "https") if scheme in found}
    if not proxies:
        return KeptAliveClient(timeout_s)
    session = requests.Session()
    session.trust_env = False  # resolved above, once; requests would read the environment on every call
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=MAX_CONNECTIONS)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return stripe.RequestsClient(timeout=timeout_s, session=session, proxy=proxies)
