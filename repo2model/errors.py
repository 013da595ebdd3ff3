"""The one exception type for problems the user can fix."""


class UserError(Exception):
    """Bad input (config, files, git, CLI): reported as one line and a non-zero exit.

    The message names the problem and, where there is one, the fix. Bugs are
    not UserErrors: they raise whatever they raise, with a traceback.
    """

    exit_code = 2
