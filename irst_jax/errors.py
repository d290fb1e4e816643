"""User errors and the command-line runner that reports them as one line.

Every command of irst_jax (``irst_jax.main``, ``predict``, ``score``, ``data.stats``,
``import_weights``) runs its ``main`` with :func:`run_main`. A user error (a bad flag, value,
file or folder) is printed as one line on stderr,

  error: <what, which file or value, what was expected>

and the command exits with status 2, without a traceback; ``--verbose`` (or the environment
variable ``IRST_JAX_VERBOSE=1``) prints the traceback above that line.

User errors are :class:`UserError` and every ``ValueError`` (the project's own errors derive
from it: ``checkpoints.WorkdirMismatchError``, ``detector.ArtifactError``,
``sources.InvalidSourceError``, ``train.TrainingDivergedError``, ...), every ``OSError``
(``FileNotFoundError``, ``sources.DatasetNotFoundError``, a full disk), absl's
``app.UsageError`` and flag errors (unknown flag, missing required flag, bad enum value),
ml_collections' config-file and override errors (``--config=nope.py``,
``--config.train.batch_sise=3``) and :class:`MissingDependencyError` (an optional package).
Any other exception (``TypeError``, ``AssertionError``, ...) is a bug: it keeps Python's
traceback and exit status 1.
"""
from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Any, Callable, NoReturn, Optional, Sequence

from absl import app, flags

#: Environment variable that turns on tracebacks of user errors (any value but '', '0').
VERBOSE_ENV = "IRST_JAX_VERBOSE"
#: Exit status of a command stopped by a user error.
EXIT_USER_ERROR = 2


class UserError(ValueError):
  """A bad input of the user (value, file, folder): reported as one line by :func:`run_main`."""


class MissingDependencyError(ImportError):
  """An optional package that a feature needs is not installed; the message says how to
  install it (reported as one line by :func:`run_main`)."""


#: Exception types reported as one line (the project's user errors derive from these).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, MissingDependencyError,
                                                app.UsageError, flags.Error)


def is_user_error(error: BaseException) -> bool:
  """Whether `error` is a user error (see the module docstring) rather than a bug."""
  return isinstance(error, USER_ERRORS)


def one_line(error: BaseException) -> str:
  """The message of `error` on one line: its lines stripped and joined with spaces.

  ml_collections' config-file errors (which embed a traceback) are reduced to the flag and the
  final message; an empty message gives the exception's type name.
  """
  message = str(error)
  if isinstance(error, (KeyError, AttributeError)) and error.args:
    arg = error.args[0]   # KeyError's str() is a repr; ConfigDict wraps a KeyError in it
    message = str(arg.args[0] if isinstance(arg, KeyError) and arg.args else arg)
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if "Traceback (most recent call last)" in message:
    head = re.match(r"\s*(.*?):\s*Error whilst parsing config file", message)
    last = [re.sub(r"^[\w.]*(Error|Exception): ", "", line) for line in lines[-1:]]
    lines = ([head.group(1) + ":"] if head else []) + last
  text = " ".join(lines)
  return text or type(error).__name__


def _verbose(argv: Sequence[str]) -> bool:
  if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
    return True
  if flags.FLAGS.is_parsed() and "verbose" in flags.FLAGS:
    return bool(flags.FLAGS.verbose)
  return any(re.fullmatch(r"--?verbose(=(true|1|yes))?", a, re.IGNORECASE) for a in argv)


def report(error: BaseException, argv: Sequence[str] = ()) -> NoReturn:
  """Prints `error` as ``error: <message>`` (after its traceback when verbose) and exits 2."""
  sys.stdout.flush()
  if _verbose(argv):
    traceback.print_exception(error)
  sys.stderr.write(f"error: {one_line(error)}\n")
  sys.stderr.flush()
  sys.exit(EXIT_USER_ERROR)


def _caused(message: str, cause: BaseException) -> UserError:
  error = UserError(message)
  error.__cause__ = cause
  return error


def _override_error(error: BaseException, argv: Sequence[str]) -> Optional[UserError]:
  """'--config.train.batch_sise=3: the config has no field ...' for an override of a field
  that does not exist, or None when no override on the command line names the field."""
  message = one_line(error)
  key = re.match(r"'([^']+)'", message)
  if not key:
    return None
  for arg in argv:
    name = arg.split("=", 1)[0]
    if arg.startswith("-") and "." in name and name.endswith("." + key.group(1)):
      hint = message[key.end():].strip()
      hint = f" ({hint[0].lower()}{hint[1:]})" if hint else ""
      return _caused(f"{arg}: the config has no field {key.group(0)}{hint}", error)
  return None


def _config_load_error() -> Optional[UserError]:
  """The error of a config file that ml_collections could not load, or None.

  ml_collections defers the error of a missing config file until the config is used; this
  reads every config flag's value so that it is reported with the other flag errors.
  """
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if flag.value is None:
      continue
    try:
      given = config_flags.get_config_filename(flag)
    except (TypeError, AttributeError, flags.Error):   # not a config-file flag
      continue
    try:
      getattr(flag.value, "keys", None)
    except OSError as e:
      cause = e.__cause__ or e
      last = [line.strip() for line in str(cause).splitlines() if line.strip()][-1:]
      return _caused(f"--{name}={given}: cannot load the config file"
                     + (f" ({last[0]})" if last else "")
                     + "; expected a Python file defining get_config(), e.g. "
                     "configs/acm_unet.py[:arg], or a packaged config's name", e)
  return None


def _resolve_config_names(argv: list[str]) -> list[str]:
  """`argv` with each config-file flag's value resolved (`irst_jax.configs.resolve_argv`)."""
  # pylint: disable=import-outside-toplevel
  from ml_collections.config_flags.config_flags import ConfigFileFlagParser

  from irst_jax import configs

  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if name == flag.name and isinstance(flag.parser, ConfigFileFlagParser):
      argv = configs.resolve_argv(argv, name)
  return argv


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser (``app.run(..., flags_parser=parse_flags)``) that reports bad flags,
  config files and config overrides as one line (exit 2) instead of absl's usage text.

  A config-file flag's value may name a packaged config (`--config=acm_unet:arg`,
  `irst_jax.configs.resolve`); neither a file nor such a name is reported here.
  """
  try:
    argv = _resolve_config_names(argv)
  except UserError as e:
    report(e, argv)
  try:
    remaining = flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:   # ml_collections: override of a missing field
    error = _override_error(e, argv)
    if error is None:
      raise
    report(error, argv)
  except Exception as e:  # pylint: disable=broad-except
    if not is_user_error(e):   # flags.Error, or a config file's get_config() raising
      raise
    report(e, argv)
  error = _config_load_error()
  if error is not None:
    report(error, argv)
  return remaining


def run_main(main: Callable[[list[str]], Any], argv: Optional[list[str]] = None) -> None:
  """``absl.app.run(main)`` reporting user errors as one line (see the module docstring).

  Defines the ``--verbose`` flag (tracebacks of user errors) when the program has none.
  """
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, f"Print the traceback of user errors too (or set "
                      f"{VERBOSE_ENV}=1).")

  def wrapped(args: list[str]) -> Any:
    try:
      return main(args)
    except Exception as e:  # pylint: disable=broad-except
      if not is_user_error(e):
        raise
      report(e, args)

  app.run(wrapped, argv=argv, flags_parser=parse_flags)
