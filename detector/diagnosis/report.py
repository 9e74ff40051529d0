"""The diagnosis wire format: the request, the answer, their bounds (standard library only).

The daemon offers a :class:`DiagnosisRequest` (``{"id", "ts", "window_s", "reason"}``) on
podguard's pod channel (kind ``diagnose``) or, for the embedded default, in a file; the helper
answers with a result object carrying the same ``id``,
a ``status`` (``done`` or ``failed``), one readable ``sentence`` and the structured findings
(see :mod:`detector.diagnosis.inpod` for the fields). Both sides use this module: the pod to
keep its answer small (:func:`bound`), the daemon to read an answer that came from a workload,
hence untrusted (:func:`parse_result`: JSON object, the expected id, every string cleaned of
control characters and cut, every number finite, depth, item counts and total size bounded).

Also the few formatting helpers the sentence and the alert text share (:func:`human_bytes`,
:func:`human_duration`). Imported by the in-pod modules, so: no third-party imports here.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

VERSION = 1
MAX_RESULT_BYTES = 6000  # the whole answer as compact JSON
MAX_SENTENCE = 400  # characters
MAX_TEXT = 200  # characters of any other string
MAX_ITEMS = 16  # entries of any list or object in an answer
MAX_DEPTH = 5
ALERT_CHARS = 600  # the longest diagnosis text in an alert or an Event
MIN_WINDOW_S = 1.0
MAX_WINDOW_S = 600.0
MAX_REQUEST_AGE_S = 900.0  # the helper ignores requests older than this (clock skew included)

_ID = re.compile(r"^d-[0-9a-f]{8,32}$")


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False)


@dataclass(frozen=True)
class DiagnosisRequest:
    id: str  # "d-<hex>", fresh and unguessable per request
    ts: float  # unix seconds when requested
    window_s: float  # seconds between the two snapshots
    reason: str = ""  # the verdict's kind and sentence, for the pod's log

    def to_json(self) -> str:
        return dumps(asdict(self))

    @classmethod
    def parse(cls, text: str | None) -> DiagnosisRequest | None:
        """The request in ``text``; None when absent, malformed or out of range."""
        if not text or len(text) > 4096:
            return None
        try:
            raw = json.loads(text)
        except ValueError:
            return None
        if not isinstance(raw, dict):
            return None
        rid, ts, window = raw.get("id"), raw.get("ts"), raw.get("window_s")
        if not isinstance(rid, str) or not _ID.match(rid):
            return None
        if not isinstance(ts, (int, float)) or not isinstance(window, (int, float)) or (
                not _finite(ts) or not _finite(window)):
            return None
        window = min(MAX_WINDOW_S, max(MIN_WINDOW_S, float(window)))
        reason = raw.get("reason", "")
        return cls(id=rid, ts=float(ts), window_s=window,
                   reason=clean_text(reason, MAX_TEXT) if isinstance(reason, str) else "")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def clean_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` without control or format characters (line breaks become spaces), whitespace
    collapsed, cut to ``limit`` characters (an ellipsis marks the cut)."""
    out = []
    for ch in text[: limit * 4]:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(" ")
        else:
            out.append(ch)
    s = " ".join("".join(out).split())
    return s if len(s) <= limit else s[: max(0, limit - 1)] + "\u2026"


def human_bytes(n: float, *, sign: bool = False) -> str:
    """1.1 GiB, 380 MiB, 12 KiB, 7 B (``sign``: a leading + or -)."""
    prefix = ("+" if n >= 0 else "-") if sign else ("-" if n < 0 else "")
    a = abs(float(n))
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if a >= size:
            v = a / size
            return f"{prefix}{v:.1f} {unit}" if v < 10 else f"{prefix}{v:.0f} {unit}"
    return f"{prefix}{a:.0f} B"


def human_duration(seconds: float) -> str:
    """20 s, 12 min, 1.5 h."""
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _clean(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**62 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return clean_text(value, MAX_TEXT)
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, list):
        return [_clean(v, depth + 1) for v in value[:MAX_ITEMS]]
    if isinstance(value, dict):
        out = {}
        for k, v in list(value.items())[:MAX_ITEMS * 2]:
            if isinstance(k, str):
                out[clean_text(k, 64)] = _clean(v, depth + 1)
        return out
    return None


def bound(result: dict[str, Any], limit: int = MAX_RESULT_BYTES) -> dict[str, Any]:
    """``result`` cleaned and shrunk until its compact JSON fits in ``limit`` bytes: lists are
    shortened from their ends, then whole sections dropped (``truncated`` lists which)."""
    out: dict[str, Any] = _clean(result, 0)
    if isinstance(result.get("sentence"), str):
        out["sentence"] = clean_text(result["sentence"], MAX_SENTENCE)
    dropped: list[str] = []
    while len(dumps(out).encode()) > limit:
        lists = [(len(dumps(v)), k) for k, v in out.items()
                 if isinstance(v, list) and len(v) > 1]
        if lists:
            _, key = max(lists)
            out[key] = out[key][: max(1, len(out[key]) // 2)]
            continue
        big = [(len(dumps(v)), k) for k, v in out.items()
               if k not in ("id", "status", "sentence", "version", "truncated")]
        if not big:
            out["sentence"] = clean_text(out.get("sentence", ""), 120)
            break
        _, key = max(big)
        del out[key]
        dropped.append(key)
    if dropped:
        out["truncated"] = sorted(set(dropped) | set(out.get("truncated") or []))
    return out


def parse_result(text: str | None, *, expect_id: str) -> dict[str, Any] | None:
    """A helper's answer to request ``expect_id``, validated (see the module docstring);
    None when absent, for another request, or not a readable answer."""
    if not text or len(text) > 4 * MAX_RESULT_BYTES:
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("id") != expect_id:
        return None
    if raw.get("status") not in ("done", "failed"):
        return None
    if not isinstance(raw.get("sentence"), str) or not raw["sentence"].strip():
        return None
    return bound(raw)


def describe(diagnosis: dict[str, Any] | None, *, limit: int = ALERT_CHARS) -> str:
    """The diagnosis field of a verdict as one line for an alert or an Event (at most
    ``limit`` characters); "" when there is none."""
    if not diagnosis:
        return ""
    status = diagnosis.get("status")
    if status == "done":
        text = f"In-pod diagnosis: {diagnosis.get('sentence', '')}"
    elif status == "pending":
        text = (f"In-pod diagnosis requested ({diagnosis.get('id', '')}); the pod's answer is "
                f"expected within {human_duration(float(diagnosis.get('expect_s') or 0))}.")
    elif status == "failed":
        text = f"In-pod diagnosis failed: {diagnosis.get('sentence', '')}"
    else:
        text = f"No in-pod diagnosis: {diagnosis.get('reason', '')}"
    return clean_text(text, limit)
