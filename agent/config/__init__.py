"""hostwatch's TOML configuration, as a package.

- :mod:`agent.config.schema`: the agent's sections, the options every plugin
  shares, and the validated :class:`Config` (``hostname`` and ``state_dir``
  resolved once, when it is built).
- :mod:`agent.config.load`: finding, reading and merging the files, the embedded
  default, and :func:`parse_config`, which turns a document into a ``Config``.
- :mod:`agent.config.interpolation`: ``${VAR}`` and ``${VAR:-default}``.
- :mod:`agent.config.validation`: the schema walker behind errors that name
  the key's path, reporting every problem at once.
- :mod:`agent.config.values`: typed option values (durations, sizes) and field
  checks; a leaf module that :mod:`agent.plugin` re-exports to plugins.
- :mod:`agent.config.docs`: each plugin's ``sample.toml`` skeleton printed
  from its schema (``python -m agent.config.docs PLUGIN``).

The schema is the documentation: every option carries a
``msgspec.Meta(description=...)``, and the registry-wide contract tests check each
plugin's ``sample.toml`` against its ``Config`` (every key, its default, its type).
"""

from agent.config.interpolation import interpolate as interpolate
from agent.config.load import DEFAULT_PATH as DEFAULT_PATH
from agent.config.load import EMBEDDED_DEFAULT as EMBEDDED_DEFAULT
from agent.config.load import ConfigError as ConfigError
from agent.config.load import find_config_files as find_config_files
from agent.config.load import load_config as load_config
from agent.config.load import loads_config as loads_config
from agent.config.load import merge_tables as merge_tables
from agent.config.load import parse_config as parse_config
from agent.config.schema import AgentSection as AgentSection
from agent.config.schema import CollectorCommon as CollectorCommon
from agent.config.schema import Config as Config
from agent.config.schema import HttpSection as HttpSection
from agent.config.schema import OutputCommon as OutputCommon
from agent.config.schema import PluginSpec as PluginSpec
from agent.config.schema import RedactionRule as RedactionRule
from agent.config.schema import RedactionSection as RedactionSection
from agent.config.validation import convert as convert  # for tests of plugin configs
from agent.config.validation import unknown_key as unknown_key
from agent.config.validation import validate as validate
