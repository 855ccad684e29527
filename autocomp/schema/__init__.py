"""The file-format machinery every settings section shares.

A YAML reader that keeps line numbers, and checked settings dataclasses whose fields carry their own
validation rule (a setting is written once).
"""

from autocomp.schema.rules import (
    At,
    Rule,
    boolean,
    dump_settings,
    hint,
    integer,
    mapping,
    non_negative,
    number,
    one_of,
    optional,
    positive,
    read_settings,
    require,
    sequence,
    setting,
    settings_keys,
    string,
    type_name,
    unit,
)
from autocomp.schema.yaml import LinedList, LinedMap, plain, read_yaml

__all__ = ["At", "LinedList", "LinedMap", "Rule", "boolean", "dump_settings", "hint", "integer", "mapping",
           "non_negative", "number", "one_of", "optional", "plain", "positive", "read_settings", "read_yaml",
           "require", "sequence", "setting", "settings_keys", "string", "type_name", "unit"]
