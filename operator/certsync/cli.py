"""Command line: `certsync run` (the operator, also `python -m certsync`) and `certsync emulator emqx|cdn`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from certsync import logs
from certsync import settings as settings_module


def run_operator(argv: Sequence[str]) -> int:
    try:
        config = settings_module.load(argv)
    except settings_module.SettingsError as error:
        print(f"certsync: {error}", file=sys.stderr)
        return 2
    import kopf

    from certsync import handlers  # noqa: F401  (registers the handlers)

    logs.configure(config.log_format)
    memo = kopf.Memo(settings=config)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            memo=memo,
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "emulator":
        from certsync.emulators.__main__ import main as emulator_main

        return emulator_main(args[1:])
    if args and args[0] == "run":
        args = args[1:]
    return run_operator(args)


if __name__ == "__main__":
    sys.exit(main())
