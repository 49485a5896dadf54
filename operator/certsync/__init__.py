"""certsync: keeps TLS certificates held in Kubernetes Secrets in sync with EMQX Cloud and the CDN SSL API."""

__version__ = "0.1.0"
