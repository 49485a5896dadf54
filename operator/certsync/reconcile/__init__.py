"""Pure reconcile decisions: observed state in, what to do out. No kopf, no HTTP, no clock reads.

Each kind has its own module (`deploymenttls`, `cdn`, `orders`); `inputs`
checks the referenced Secrets, `record` is the write-ahead record kept in
status, `targets` decides who owns a remote target, `conditions` says what
kstatus conditions read.
"""

from certsync.reconcile.conditions import POLL_FIRST_S, State, conditions, poll_delay
from certsync.reconcile.inputs import (
    CDN_CREDENTIALS,
    EMQX_CREDENTIALS,
    TLS_KEYS,
    TLS_SECRET_TYPE,
    Problem,
    SecretView,
    TLSMaterial,
    check_ca_secret,
    check_tls_secret,
    credentials,
    credentials_id,
    keys_of,
)

__all__ = [
    "CDN_CREDENTIALS",
    "EMQX_CREDENTIALS",
    "POLL_FIRST_S",
    "TLS_KEYS",
    "TLS_SECRET_TYPE",
    "Problem",
    "SecretView",
    "State",
    "TLSMaterial",
    "check_ca_secret",
    "check_tls_secret",
    "conditions",
    "credentials",
    "credentials_id",
    "keys_of",
    "poll_delay",
]
