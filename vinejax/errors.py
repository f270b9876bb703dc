"""The error a user can cause and fix: a config value (or a plug-in it names) that is unknown, of
the wrong type, or impossible. Commands report it in one line naming the key (exit status 2)."""


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or impossible."""
