"""The one exception type a user sees: the CLI prints it as a single ``error: ...`` line and exits 2."""


class UserError(Exception):
    """A problem the user can fix (bad name, path, spec, address). The CLI prints it as one line."""
