"""The pod's end of podguard's pod channel: one client, standard library only.

Used inside training pods by the checkpoint helper
(:class:`detector.remediation.checkpoint.CheckpointResponder`) and the leak-diagnosis helper
(:class:`detector.diagnosis.helper.DaemonChannel`); the daemon's end is
:class:`detector.remediation.channel.ChannelServer` (the protocol is described there). Two
calls, both ``POST`` with the pod's projected service-account token (audience ``podguard``,
re-read from its file on every call: the kubelet rotates it)::

    requests()                      -> the pending requests for this pod (every kind)
    answer(kind, request_id, result) -> (accepted, reason)

Transport: ``http://`` or ``https://``. Over HTTPS the daemon's certificate is verified with
``ca_file`` (``PODGUARD_CA_FILE``; none: the system's CAs) and must name the host of the
endpoint (e.g. ``podguard-channel.podguard.svc``); a certificate that does not verify is
refused (:class:`ChannelError` saying so), never downgraded. Because the token travels in
every call, HTTPS keeps it off the node's network in clear text. No proxy is ever used (the
channel stays on the node). Answers are read up to 64 KiB.

Environment (``from_env``): ``PODGUARD_ENDPOINT``, ``PODGUARD_TOKEN_FILE`` (default
``/var/run/secrets/podguard/token``), ``PODGUARD_CA_FILE``.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_TOKEN_FILE = "/var/run/secrets/podguard/token"
MAX_ANSWER = 65536


class ChannelError(Exception):
    """The daemon could not be reached, its certificate did not verify, or it refused the
    call (the reason is in the text)."""


class PodChannelClient:
    """``requests()`` and ``answer()`` against the node's daemon (module docstring)."""

    def __init__(self, endpoint: str, token_file: str | Path, *,
                 ca_file: str | Path | None = None, timeout_s: float = 5.0) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"PODGUARD_ENDPOINT must be an http(s) URL, not {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self.token_file = Path(token_file)
        self.timeout_s = timeout_s
        self.ca_file = str(ca_file) if ca_file else ""
        self._context: ssl.SSLContext | None = None
        if self.endpoint.startswith("https://"):
            try:  # verification on, hostname checked: create_default_context's defaults
                self._context = ssl.create_default_context(cafile=self.ca_file or None)
            except (OSError, ssl.SSLError) as e:
                raise ValueError(f"PODGUARD_CA_FILE {self.ca_file!r} is not a readable PEM "
                                 f"CA file: {e}") from e
        elif self.ca_file:
            raise ValueError(f"PODGUARD_CA_FILE is set but PODGUARD_ENDPOINT {endpoint!r} is "
                             f"plain http: use https:// (the daemon's channel has TLS)")
        handlers: list[Any] = [urllib.request.ProxyHandler({})]  # never a proxy
        if self._context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self._context))
        self._opener = urllib.request.build_opener(*handlers)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **kwargs: Any) -> PodChannelClient:
        env = os.environ if environ is None else environ
        return cls(env.get("PODGUARD_ENDPOINT", ""),
                   env.get("PODGUARD_TOKEN_FILE", DEFAULT_TOKEN_FILE),
                   ca_file=env.get("PODGUARD_CA_FILE") or None, **kwargs)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One call: (HTTP status, the JSON object answered; {} if none)."""
        try:
            token = self.token_file.read_text().strip()
        except OSError as e:
            raise ChannelError(f"cannot read the token {self.token_file}: {e}") from e
        req = urllib.request.Request(
            self.endpoint + path, data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                code, text = resp.status, resp.read(MAX_ANSWER)
        except urllib.error.HTTPError as e:
            code, text = e.code, e.read(MAX_ANSWER)
        except urllib.error.URLError as e:
            if isinstance(e.reason, ssl.SSLError):
                raise ChannelError(
                    f"podguard at {self.endpoint}: TLS failed ({e.reason}); is "
                    f"PODGUARD_CA_FILE ({self.ca_file or 'the system CAs'}) the CA that "
                    f"signs the channel's certificate?") from e
            raise ChannelError(f"podguard at {self.endpoint} did not answer: {e}") from e
        except ssl.SSLError as e:
            raise ChannelError(f"podguard at {self.endpoint}: TLS failed ({e})") from e
        except (OSError, ValueError) as e:
            raise ChannelError(f"podguard at {self.endpoint} did not answer: {e}") from e
        try:
            doc = json.loads(text or b"{}")
        except ValueError:
            doc = {}
        return code, doc if isinstance(doc, dict) else {}

    def requests(self) -> list[dict[str, Any]]:
        """This pod's pending requests, of every kind."""
        code, doc = self.post("/v1/requests", {})
        if code != 200:
            raise ChannelError(f"podguard refused: HTTP {code} {doc.get('error', '')}")
        got = doc.get("requests")
        return [r for r in got if isinstance(r, dict)] if isinstance(got, list) else []

    def answer(self, kind: str, request_id: Any, result: dict[str, Any]) -> tuple[bool, str]:
        """(True, "") when accepted; (False, why) when refused for good (a stale or unknown
        id: not worth retrying); raises :class:`ChannelError` when worth retrying (no
        answer, 401, 503, 5xx)."""
        code, doc = self.post("/v1/answers", {"kind": kind, "id": request_id,
                                               "result": result})
        if code == 200 and doc.get("accepted") is True:
            return True, ""
        if code in (401, 503) or code >= 500:
            raise ChannelError(f"podguard refused: HTTP {code} {doc.get('error', '')}")
        return False, str(doc.get("reason") or doc.get("error") or f"HTTP {code}")
