"""The one exception type for problems the user can fix, and how an exception becomes one line."""


class UserError(Exception):
    """Bad input (config, files, git, CLI): reported as one line and a non-zero exit.

    The message names the problem and, where there is one, the fix. Bugs are
    not UserErrors: they raise whatever they raise, with a traceback.
    """

    exit_code = 2


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first non-empty line of `exc`'s message (at most `limit` characters), or its type name.

    For wrapping a library's multi-line error into a one-line UserError.
    """
    for line in str(exc).splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return type(exc).__name__
