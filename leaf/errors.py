"""The one exception type for mistakes a user can fix.

Library code raises `LeafError` for bad input (a missing model folder, an empty sample, a mask that selects
nothing). The message says what is wrong, shows the values involved, and says how to fix it; the CLI prints it
without a traceback and exits with code 1. Bugs stay ordinary exceptions.
"""


class LeafError(Exception):
    """A user-facing error: what went wrong, the actual values, and the fix."""
