"""Errors that the CLI reports as one line, without a traceback."""


class CitybrainError(Exception):
    """An error the user can fix: a bad file, a bad option, a missing service."""


class ScenarioError(CitybrainError):
    """A scenario that cannot be loaded or run."""


class ConfigError(CitybrainError):
    """A configuration file with a missing or bad key."""
