"""User-facing errors: raised before expensive work starts, with a message that names what is wrong."""


class GanOpsError(Exception):
    """An error caused by the user's input (config, files, names); the CLI prints it without a traceback."""


class ConfigError(GanOpsError):
    """A config file or override is invalid: the message names the key."""


class DatasetError(GanOpsError):
    """A dataset source or prepared dataset is missing or invalid: the message names the file."""
