"""The one reader of ``SUREFOOT_*`` environment variables, with one meaning of every type.

Entry points read the environment (``os.environ``) and hand the mapping to a settings class;
the settings class turns it into typed values here. Bools are ``1/true/yes/on`` and
``0/false/no/off``; anything else, for any type, is an error that names the variable.
"""

from envreader._reader import (
    FALSE,
    TRUE,
    EnvError,
    env_fields,
    env_values,
    parse,
    read_settings,
    read_value,
)

__all__ = [
    "FALSE",
    "TRUE",
    "EnvError",
    "env_fields",
    "env_values",
    "parse",
    "read_settings",
    "read_value",
]
