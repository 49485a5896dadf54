"""The one scrubber for every text that leaves the process: remote messages, exceptions, conditions, Events, logs.

A remote may echo what it was sent (a request body with the private key, the
Authorization header, the password of a login, the token). Every message
built from a remote's answer therefore passes through a `Scrubber` that knows
the secrets of that call, and every log record through `ScrubFilter`
(logs.py), which knows none but recognises their shapes.

What is removed, before any cut to length (a cut must never leave half of a
secret behind):

- the exact value of every secret given (password, token, API secret, the
  Basic credentials built from it), also URL-encoded and JSON-escaped;
- any run of `FRAGMENT` or more characters that also occurs in a long secret
  (a private key PEM and each of its base64 lines, a certificate body), so a
  remote that re-wraps, cuts or escapes a key still leaks nothing of length;
- any PEM private-key block, also one cut short (BEGIN without END);
- the values of `Authorization`, `Proxy-Authorization` and `CDN-AUTH-TOKEN`
  headers, `Basic …`/`Bearer …` credentials, the values of fields named
  like a password, token, secret or private key, and the user info of URLs.

Cost: linear in the text (one set lookup per position for the fragments, one
pass of each pattern); texts longer than `MAX_INPUT` are cut to that first,
which is far beyond anything that is kept (`MAX_MESSAGE`).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

REDACTED = "[redacted]"
FRAGMENT = 16  # a run this long shared with a long secret is removed
# Only every STRIDE-th window of a secret is kept, GRAM long: any FRAGMENT-long run of the secret still contains
# one whole, and a match is widened by STRIDE - 1 on each side to cover the run. A quarter of the memory and
# of the time to build, which matters: a scrubber is built for every remote call, with the private key in it.
STRIDE = 4
GRAM = FRAGMENT - STRIDE + 1
MAX_MESSAGE = 200  # what status, Events and exception messages keep of a remote's text
MAX_INPUT = 64 * 1024  # texts are cut to this before scrubbing (linear cost, bounded)

_PEM_PRIVATE = re.compile(
    r"-----BEGIN ([A-Z0-9 ]{0,40}PRIVATE KEY)-----.*?(?:-----END \1-----|\Z)",
    re.DOTALL,
)
# A private-key block whose dashes were cut or mangled: from a BEGIN…PRIVATE KEY marker to its END or the text's end.
_PEM_PRIVATE_OPEN = re.compile(r"BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY.*?(?:END [A-Z0-9 ]{0,40}PRIVATE KEY-*|\Z)", re.DOTALL)
_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|cdn-auth-token|x-auth-token)"  # the header's name
    r"([\"']?\s*[:=]\s*[\"']?)"  # `: `, `=`, `": "` and the like
    r"(?:(basic|bearer|token|digest)\s+)?"  # an auth scheme, kept
    r"(?P<value>[^\s\"',;&}\]]+)"  # the value, removed
)
# A credential after an auth scheme: 6+ token characters, one of them a digit or + / = (so prose stays).
_SCHEME = re.compile(r"(?i)\b(?:basic|bearer)\s+(?P<value>(?=[A-Za-z._~-]*[0-9+/=])[A-Za-z0-9+/=._~-]{6,})")
# User info in a URL (`https://user:password@host`): removed up to the `@`.
_USERINFO = re.compile(r"(?i)\b[a-z][a-z0-9+.-]{0,20}://(?P<value>[^/\s@?#]{1,256})@")
_FIELD = re.compile(
    r"(?i)([\"']?\b(?:password|passwd|api_?secret|apisecret|secret|auth_token|token|private_?key|privatekey)"
    r"[\"']?\s*[:=]\s*)"  # `"password": `, `password=`, `token: `
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"?|'[^']*'?|[^\s&,;}\]]+)"  # the value: quoted (possibly cut) or bare
)


def _variants(value: str) -> set[str]:
    """The forms a value takes when a remote echoes it: as is, on one line, URL-encoded, JSON-escaped."""
    forms = {value, " ".join(value.split())}
    for form in list(forms):
        forms.add(urllib.parse.quote_plus(form))
        forms.add(urllib.parse.quote(form, safe=""))
        escaped = json.dumps(form, ensure_ascii=False)[1:-1]
        forms.update({escaped, escaped.replace("/", "\\/"), json.dumps(form)[1:-1]})
    return {f for f in forms if f}


def _pem_bodies(value: str) -> list[str]:
    """The base64 lines of each PEM block in `value`, and each block's body on one line."""
    pieces: list[str] = []
    body: list[str] = []
    inside = False
    for line in value.splitlines():
        line = line.strip()
        if line.startswith("-----BEGIN"):
            inside, body = True, []
        elif line.startswith("-----END"):
            inside = False
            pieces.extend(body)
            pieces.append("".join(body))
        elif inside and line:
            body.append(line)
    return pieces


@dataclass(frozen=True)
class Scrubber:
    """Removes the given secrets (and everything that looks like a credential) from texts.

    Cheap to build: the windows of long secrets are made on the first scrub, so a call waiting its turn
    holds only the secret's forms, and a call that succeeds without anything to scrub never makes them."""

    exact: tuple[str, ...] = ()
    long: tuple[str, ...] = field(default=(), repr=False)  # forms of at least FRAGMENT characters

    @classmethod
    def of(cls, *secrets: str | bytes | Iterable[str | bytes | None] | None) -> Scrubber:
        values: list[str] = []
        for secret in secrets:
            if isinstance(secret, str | bytes) or secret is None:
                values.append(_text(secret))
            else:
                values.extend(_text(s) for s in secret)
        exact: set[str] = set()
        long: set[str] = set()
        for value in values:
            if not value:
                continue
            for piece in [value, *_pem_bodies(value)]:
                for form in _variants(piece):
                    (long if len(form) >= FRAGMENT else exact).add(form)
        return cls(tuple(sorted(exact, key=len, reverse=True)), tuple(sorted(long)))

    def with_secrets(self, *secrets: str | bytes | None) -> Scrubber:
        more = Scrubber.of(*secrets)
        exact = tuple(sorted(set(self.exact) | set(more.exact), key=len, reverse=True))
        return Scrubber(exact, tuple(sorted(set(self.long) | set(more.long))))

    @functools.cached_property
    def grams(self) -> frozenset[str]:
        """One GRAM-long window in STRIDE of every long form."""
        return frozenset(form[i : i + GRAM] for form in self.long for i in range(0, len(form) - GRAM + 1, STRIDE))

    def scrub(self, text: object) -> str:
        """`text` without any secret or credential; not cut (beyond `MAX_INPUT`), not flattened.

        Every match is found on the original text and all are replaced in one pass, so that a
        marker never takes part in a later match and nothing is scanned twice.
        """
        text = _text(text)[:MAX_INPUT]
        spans = [*_pattern_spans(text), *self._fragment_spans(text), *self._exact_spans(text)]
        if not spans:
            return text
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out: list[str] = []
        position = 0
        for start, end in merged:
            out += [text[position:start], REDACTED]
            position = end
        out.append(text[position:])
        return "".join(out)

    def short(self, text: object, limit: int = MAX_MESSAGE) -> str:
        """On one line, scrubbed, then cut to `limit` characters: what a message may keep of a remote's text."""
        flat = " ".join(_text(text)[:MAX_INPUT].split())
        clean = self.scrub(flat)
        return clean if len(clean) <= limit else clean[: limit - 1] + "…"

    def _fragment_spans(self, text: str) -> list[tuple[int, int]]:
        """Every maximal run covered by the kept windows of a secret, each widened by STRIDE - 1 on both sides."""
        if not self.grams:
            return []
        grams, wide = self.grams, STRIDE - 1
        spans: list[tuple[int, int]] = []
        for start in range(len(text) - GRAM + 1):
            if text[start : start + GRAM] in grams:
                low, high = max(0, start - wide), min(len(text), start + GRAM + wide)
                if spans and low <= spans[-1][1]:
                    spans[-1] = (spans[-1][0], high)
                else:
                    spans.append((low, high))
        return spans

    def _exact_spans(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for value in self.exact:
            at = text.find(value)
            while at >= 0:
                spans.append((at, at + len(value)))
                at = text.find(value, at + 1)
        return spans


def _pattern_spans(text: str) -> list[tuple[int, int]]:
    """What looks like a credential whoever's it is: key blocks, auth header values, credential fields."""
    spans = [m.span() for m in _PEM_PRIVATE.finditer(text)]
    spans += [m.span() for m in _PEM_PRIVATE_OPEN.finditer(text)]
    spans += [m.span("value") for m in _HEADER.finditer(text)]
    spans += [m.span("value") for m in _SCHEME.finditer(text)]
    spans += [m.span("value") for m in _FIELD.finditer(text)]
    spans += [m.span("value") for m in _USERINFO.finditer(text)]
    return spans


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


GENERIC = Scrubber()
"""Knows no secret; still removes private-key blocks, auth headers and credential-named fields."""


def scrub(text: object, secrets: Iterable[str | bytes | None] = ()) -> str:
    return Scrubber.of(secrets).scrub(text)


def short(text: object, secrets: Iterable[str | bytes | None] = (), limit: int = MAX_MESSAGE) -> str:
    return Scrubber.of(secrets).short(text, limit)


def basic_credentials(user: str, password: str) -> str:
    """The base64 of an HTTP Basic header: a remote may echo it without its name."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()
