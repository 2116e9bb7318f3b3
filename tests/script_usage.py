"""The scripts' usage errors, as a user sees them: exit status 2 and the usage message on stderr."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def usage_error(main: Callable[[list[str]], object], argv: list[str], capsys) -> str:
    """stderr of `main(argv)`, which must exit with status 2 after printing the usage message."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: "), err
    return err
