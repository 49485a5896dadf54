"""Log output: one JSON event per line in a container, plain text on a terminal.

Messages are built from condition reasons and remote status codes, and remote
texts reach them only through the scrubber (scrub.py). As a second line of
defence `ScrubFilter` passes every record (message, arguments, exception text)
through the generic scrubber, which removes PEM private-key blocks, auth
header values and credential-named fields whoever wrote them, kopf and
libraries included; it sits on the output handler and on kopf's per-object
logger, whose own handler posts Kubernetes Events. kopf's per-object loggers
attach `k8s_ref`, from which kind, namespace and name are taken.

The level (`CERTSYNC_LOG_LEVEL`) applies to certsync's loggers and to kopf's, which
follow it: at `debug` kopf's own debug lines (handler runs, patches of the watched
resources, which carry no secret) show too. Libraries that would log request or
response bodies at debug (the kubernetes client, urllib3, httpx, httpcore) stay at
warning whatever the level: a Secret's body must never reach a log, and certsync's
own debug line per remote call (remote.py) says what they would.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import traceback

from certsync.scrub import GENERIC, Scrubber

MAX_ERROR = 400  # of an exception's message in a JSON event
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Kept at warning at every level: their debug output has request and response bodies (a Secret's, with its key).
QUIET = ("httpx", "httpcore", "urllib3", "kubernetes", "hpack")


class ScrubFilter(logging.Filter):
    """Rewrites each record in place so that no handler after it sees a credential or a key."""

    def __init__(self, scrubber: Scrubber = GENERIC) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_certsync_scrubbed", False):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a record whose arguments do not fit its format
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.scrubber.scrub(message), None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.scrubber.scrub(text)
            record.certsync_error = self.scrubber.short(str(record.exc_info[1]), MAX_ERROR)
        elif record.exc_text:
            record.exc_text = self.scrubber.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrubber.scrub(record.stack_info)
        record._certsync_scrubbed = True
        return True


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
            event["error"] = record.exc_info[0].__name__  # the type, and the message as scrubbed; no traceback text
            message = getattr(record, "certsync_error", None)
            if message:
                event["errorMessage"] = message
            frames = traceback.extract_tb(record.exc_info[2])[-6:]  # where, never what: file, line, function
            event["where"] = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in frames]
        return json.dumps(event, ensure_ascii=False)


def install_filters(handler: logging.Handler) -> None:
    """The scrub filter on `handler` and on kopf's per-object logger (whose Event poster is its own handler)."""
    handler.addFilter(ScrubFilter())
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, ScrubFilter) for f in objects.filters):
        objects.addFilter(ScrubFilter())


def configure(log_format: str, level: str | int = "info") -> None:
    """One handler on the root logger, scrubbed; `level` a name of LEVELS (settings.py checked it) or a number."""
    number = LEVELS[level.lower()] if isinstance(level, str) else level
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    install_filters(handler)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(number)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(number, logging.WARNING))
