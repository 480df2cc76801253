"""Search spaces: elastic layers, supernets and the registry that names them.

Importing this package registers every built-in space.
"""

from search_spaces import (
    cnn1d,  # noqa: F401  (registers "cnn1d")
    mobilenetv3,  # noqa: F401  (registers "mobilenetv3")
    transformer,  # noqa: F401  (registers "transformer")
)
from search_spaces.base import (
    Config,
    ConfigError,
    Dimension,
    SearchSpace,
    Supernet,
    get_space,
    register_space,
    registered_spaces,
    space_type,
)

__all__ = [
    "Config",
    "ConfigError",
    "Dimension",
    "SearchSpace",
    "Supernet",
    "get_space",
    "register_space",
    "registered_spaces",
    "space_type",
]
