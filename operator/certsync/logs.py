"""Log output: one JSON event per line in a container, plain text on a terminal.

The operator never logs key material, passwords, tokens or API secrets: messages are
built from condition reasons and remote status codes only (see remote.py). kopf's
per-object loggers attach `k8s_ref`, from which kind, namespace and name are taken.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import traceback


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            event.update({k: ref[k] for k in ("kind", "namespace", "name") if ref.get(k)})
        reason = getattr(record, "reason", None)
        if reason:
            event["reason"] = reason
        if record.exc_info and record.exc_info[0] is not None:
            event["error"] = record.exc_info[0].__name__  # the type, not the message: a message may quote input
            frames = traceback.extract_tb(record.exc_info[2])[-6:]
            event["where"] = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in frames]
        return json.dumps(event, ensure_ascii=False)


def configure(log_format: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # request lines add nothing to our own events
