"""What every ``onerec-*`` command shares: where the configs are, and clear errors.

A mistake in the input (a missing file, a bad value, a wrong bundle) ends the command
with one line on stderr and exit status 2, not a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
USER_ERROR_EXIT = 2

F = TypeVar("F", bound=Callable[..., Any])


class UserError(ValueError):
    """A problem the user can fix: bad configuration or input."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types reported as one line (import-light: resolved lazily)."""
    from data_pipeline.bundle import BundleError
    from data_pipeline.schema import SchemaError, TooManyRejectsError

    return (UserError, SchemaError, TooManyRejectsError, BundleError, FileNotFoundError)


def clear_errors(command: str) -> Callable[[F], F]:
    """Turn user errors raised by ``fn`` into one stderr line and exit status 2."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except user_errors() as err:
                print(f"{command}: error: {err}", file=sys.stderr)
                sys.exit(USER_ERROR_EXIT)
            except MissingMandatoryValue as err:  # a `???` left unset, e.g. data.path
                print(f"{command}: error: no value for {err.full_key}: set it on the command line, "
                      f"e.g. {err.full_key}=...", file=sys.stderr)
                sys.exit(USER_ERROR_EXIT)

        return run  # type: ignore[return-value]

    return wrap


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
