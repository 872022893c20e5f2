"""The one error that means "fix your input": the CLI prints its first line and exits 2.

Everything else, a `ValueError` from torch, timm or a bug of ours included, keeps its
traceback and a non-2 exit status, so that it can be reported. `UserError` subclasses
`ValueError` so that Python callers who catch `ValueError` around stdistill keep working.
"""
from __future__ import annotations

__all__ = ['UserError', 'first_line', 'whole_message']


class UserError(ValueError):
    """Bad input (a recipe key, a file, a folder, a flag), named with what to fix in its first line."""


def first_line(e: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none): what a one-line
    refusal quotes of a library's error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def whole_message(e: BaseException, limit: int = 300) -> str:
    """An error's whole message on one line, cut at `limit` characters: for errors whose first
    line says nothing (torch's "Error(s) in loading state_dict for X:")."""
    return ' '.join(str(e).split())[:limit]
