"""One controller per kind: observe -> plan (`certsync.reconcile`) -> apply, recording after each write."""
