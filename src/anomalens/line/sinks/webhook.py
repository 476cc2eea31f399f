"""Webhook: each result POSTed as JSON (``Content-Type: application/json``) to a URL, from the sink's own
thread, with a timeout per request (``timeout``) so that a peer that hangs costs at most that long.

Any 2xx answer is success. No answer, a connection error, 408, 429 or a 5xx mean the peer is down: the
record is spooled and retried with exponential back-off, in order. Any other answer (400, 404, a redirect)
refuses this record for good: it is dropped, counted and logged, and the next record is tried.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request

from anomalens.line.sinks.delivery import PeerDown, RecordRefused, Sink, one_line
from anomalens.version import __version__

RETRY_STATUSES = {408, 429}  # besides every 5xx: the peer asks to try again later


class RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a 301/302/303 with a GET and no body: the record would be lost as "sent"."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class WebhookSink(Sink):
    def __init__(self, *args, url: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.url = url
        self.opener = urllib.request.build_opener(RefuseRedirects)

    def deliver(self, record: dict, payload: str) -> None:
        request = urllib.request.Request(self.url, data=payload.encode("utf-8"), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": f"anomalens/{__version__}"})
        try:
            with self.opener.open(request, timeout=self.settings.timeout) as answer:
                answer.read(65536)  # the body is not used; reading it lets the connection close cleanly
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500 or exc.code in RETRY_STATUSES:
                raise PeerDown(f"HTTP {exc.code} {exc.reason}") from None
            raise RecordRefused(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise PeerDown(one_line(exc.reason) if isinstance(exc.reason, BaseException) else str(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:  # a timeout while reading, a connection reset
            raise PeerDown(one_line(exc) if str(exc) else type(exc).__name__) from None
