"""certsync: keeps TLS certificates held in Kubernetes Secrets in sync with EMQX Cloud and the CDN SSL API."""

from certsync.version import version as _version

__version__ = _version()
