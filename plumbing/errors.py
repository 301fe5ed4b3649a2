"""The errors every command prints as one line (no traceback): RunError, WriteError for a file that could not
be written (it names the file, why, and the fix), and DownloadError for data no mirror served."""


class RunError(Exception):
    """A problem with the user's settings or files: printed as one line, no traceback."""


class WriteError(RunError):
    """A file could not be written (a full disk, a read-only folder, a path through a file, ...).

    Raised `from` the OSError (or torch's RuntimeError) behind it, so rundir.disk_full still finds the cause.
    """


class DownloadError(RunError):
    """No mirror served a file (offline, refused, or the wrong bytes): names each mirror's failure and the fix."""
