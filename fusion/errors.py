"""Errors that describe a user's mistake (bad data, file or setting): commands report them without a traceback."""


class UserError(Exception):
    """A problem with what the user gave (manifest, media file, checkpoint, config value); the message names it
    and says what to do. Every command ends with this message and a non-zero exit status."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key (e.g. `comm_hook.ratio`)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder named in the config does not exist; the message names the key and the path."""
