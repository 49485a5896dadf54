"""Emulators of the two remote APIs: real HTTP servers for tests and the demo (never for production)."""
