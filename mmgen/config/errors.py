"""The config's error: a user mistake in a config value, raised by any package that reads one.

``mmgen.cli.run_cli`` prints it as one ``error:`` line with exit status 2.
"""


class ConfigError(ValueError):
    """A user mistake in choosing or overriding the config, or a config value a stage cannot use."""
