"""User-facing errors: the CLI turns any of these into one line on stderr and exit code 2."""


class L2LError(Exception):
    """Base class for every error a user can cause and fix (bad data, bad config, bad input)."""


class DataError(L2LError):
    """Broken or missing dataset files; the message names the file and the entry."""


class ConfigError(L2LError):
    """An invalid configuration value or an unknown key."""


class CheckpointError(L2LError):
    """A checkpoint directory that is missing files or cannot be loaded."""


class TrainingError(L2LError):
    """A run that cannot go on (its loss turned non-finite); the message says what was kept."""


class OutputError(L2LError):
    """A file the user asked for cannot be written (a parent that is a file, no permission, a full disk)."""


class InputError(L2LError):
    """Bad input to prediction or a command (unreadable image, empty text, ...)."""
