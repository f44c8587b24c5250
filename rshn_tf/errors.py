"""The one exception type for problems a user can cause (bad input, bad config, missing files)."""


class RshnError(Exception):
    """An error caused by user input: a bad file, folder, YAML key or argument.

    The message names the offending file or key and, where possible, says how to fix it. The CLI prints the
    message without a traceback and exits with status 2.
    """
