"""User-facing errors: one clear paragraph, a non-zero exit code, no traceback.

Raise NNLabError (or a subclass) for anything the user can fix; the entry points
print `str(err)` and exit with `err.exit_code`. HYDRA_FULL_ERROR=1 shows the
traceback for those who want it.
"""

from __future__ import annotations

import os
import sys
import textwrap


class NNLabError(Exception):
    """An error the user can fix. The message says what was wrong and how to fix it."""

    exit_code = 2
    kind = "error"

    def render(self) -> str:
        head = f"nnlab: {self.kind}: "
        paragraphs = str(self).strip().split("\n\n")
        body = "\n\n".join(
            textwrap.fill(
                head + p if i == 0 else p,
                width=100,
                subsequent_indent="  ",
                break_on_hyphens=False,
                break_long_words=False,
            )
            if "\n" not in p
            else (head + p if i == 0 else p)
            for i, p in enumerate(paragraphs)
        )
        return body


class ConfigError(NNLabError):
    kind = "config error"


class DataError(NNLabError):
    kind = "data error"


class DeviceError(NNLabError):
    kind = "device error"


class CheckpointError(NNLabError):
    kind = "checkpoint error"


class StorageError(NNLabError):
    """The disk said no: full, read-only, gone. Nothing the config can fix, but no traceback."""

    kind = "storage error"


def full_error_wanted() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def report_and_exit(err: NNLabError) -> None:
    """Print the error's paragraph on stderr and exit with its code."""
    if full_error_wanted():
        raise err
    print(err.render(), file=sys.stderr)
    raise SystemExit(err.exit_code)


def run_command(command, argv: list[str] | None = None) -> int:
    """Run a sub-command's function on its arguments: a user error ends as its paragraph and exit
    code."""
    try:
        command(list(sys.argv[1:] if argv is None else argv))
    except NNLabError as err:
        report_and_exit(err)
    return 0


def check_choice(key: str, value, options, error=ConfigError, note: str = "") -> None:
    """One paragraph when `value` is not one of `options`, e.g. "model.cell='lsmt' is unknown;
    use one of lstm, gru, rnn. Did you mean model.cell=lstm?"
    """
    options = [str(o) for o in options]
    if str(value) in options:
        return
    import difflib

    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f" Did you mean {key}={close[0]}?" if close else ""
    raise error(
        f"{key}={value!r} is unknown; use one of {', '.join(options)}{' ' + note if note else ''}."
        f"{hint}"
    )


def _last(key: str) -> str:
    return key.rsplit("/", 1)[-1].rsplit(".", 1)[-1]


def suggest(key: str, known, n: int = 3) -> list[str]:
    """The known keys a mistyped `key` most likely meant: those with the same last part
    (model.lr -> model.optimizer.lr; max_epochs -> trainer.max_epochs), else the closest whole
    key (model.latnt_dim -> model.latent_dim), else the closest last parts (epochs ->
    trainer.max_epochs). Keys in the same section (model., trainer.) come first."""
    import difflib

    known = [k for k in dict.fromkeys(known) if k != key]
    section = key.split(".", 1)[0] if "." in key else None

    def ranked(keys):
        return sorted(keys, key=lambda k: section is not None and not k.startswith(section + "."))

    same = ranked(k for k in known if _last(k) == _last(key))
    if same:
        return same[:n]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if close:
        return close
    lasts: dict[str, list[str]] = {}
    for k in known:
        lasts.setdefault(_last(k), []).append(k)
    scored = sorted(
        (-difflib.SequenceMatcher(None, _last(key), last).ratio(), last) for last in lasts
    )
    best = [last for score, last in scored if -score >= 0.6][:2]
    return ranked(k for last in best for k in lasts[last])[:n]


def unwrap_instantiation(err: BaseException) -> BaseException:
    """Hydra's instantiate() wraps whatever a constructor raises in an InstantiationException
    ("Error in call to target ..."); a user error raised there comes back out as itself."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, NNLabError):
            return cause
        cause = cause.__cause__
    return err
