"""httpcore asks which async library runs on every pooled request: the answer must not cost a sys.path walk."""

from __future__ import annotations

import asyncio
import importlib.machinery
from typing import Any

import certsync.remote  # noqa: F401  (its import records sniffio's absence)
import pytest
from httpcore._synchronization import current_async_library


def test_asking_for_the_async_library_searches_no_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sniffio installed, each ask was a failed `import sniffio` searching every sys.path entry (40 us)."""
    searched: list[str] = []
    real = importlib.machinery.PathFinder.find_spec

    def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        searched.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.machinery.PathFinder, "find_spec", counted)

    async def ask() -> list[str]:
        return [current_async_library() for _ in range(100)]

    assert set(asyncio.run(ask())) == {"asyncio"}
    assert searched == []
