"""What every command shares: turning errors into one-line messages and exit codes."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer
from rich.console import Console

from podsys.errors import InputError, PodsysError, Problem

console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_OK, EXIT_FAILURE, EXIT_INPUT = 0, 1, 2

F = TypeVar("F", bound=Callable)


def command_group(parent: typer.Typer, name: str, help: str) -> typer.Typer:
    """`podsys NAME ...`: a verb group under `parent`, which prints its help when called bare.
    Every group is made here and filled in its module's register() with `.command(...)(function)`."""
    group = typer.Typer(help=help, no_args_is_help=True)
    parent.add_typer(group, name=name)
    return group


def guarded(fn: F) -> F:
    """Bad input -> every problem on its own line, exit 2; other podsys failures -> exit 1.
    Never a traceback for either."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            report_problems(exc.problems)
            raise typer.Exit(EXIT_INPUT) from None
        except PodsysError as exc:
            err_console.print(f"error: {exc}", markup=False)
            raise typer.Exit(EXIT_FAILURE) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


MAX_PROBLEMS_SHOWN = 100


def report_problems(problems) -> None:
    """Every problem on its own line; past MAX_PROBLEMS_SHOWN a count (a CSV with thousands of
    bad rows would otherwise bury the first, most useful lines)."""
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        err_console.print(f"error: {problem}", markup=False)
    hidden = len(problems) - MAX_PROBLEMS_SHOWN
    if hidden > 0:
        err_console.print(f"error: ... and {hidden} more problems ({len(problems)} in all)", markup=False)


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    err_console.print(f"error: {message}", markup=False)
    sys.stderr.flush()
    raise typer.Exit(code)


def check_url(option: str, url: str, example: str) -> str:
    """A URL given on the command line: http(s)://HOST[:PORT][/path]; InputError (exit 2)
    naming the option otherwise, before anything is done with it."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number or out of range
    except ValueError:
        ok = False
    if not ok:
        raise InputError(Problem("", None, option, f"{url[:80]!r} is not an http:// or https:// URL (e.g. {example})"))
    return url
