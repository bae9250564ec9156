"""Action aliases: the format grammar, the loaded aliases and the matcher index (spec §2).

`extract_parameters(format, message)` is usable on its own (pack authors' tests, outside checks): the
parameters one format extracts from one message, defaults applied, before casting; it raises
`AliasParseError` with the reason when the message does not fit.
"""

from aliases.grammar import AliasFormatError, AliasParseError, extract_multiple, extract_parameters
from aliases.matcher import (
    AliasMatch,
    AliasMatcher,
    AliasMatchError,
    AmbiguousCommand,
    CommandTooComplex,
    NoMatch,
)
from aliases.model import Alias, AliasFormat, cast_alias_parameters, inject_immutable, load_aliases

__all__ = [
    "Alias",
    "AliasFormat",
    "AliasFormatError",
    "AliasMatch",
    "AliasMatchError",
    "AliasMatcher",
    "AliasParseError",
    "AmbiguousCommand",
    "CommandTooComplex",
    "NoMatch",
    "cast_alias_parameters",
    "extract_multiple",
    "extract_parameters",
    "inject_immutable",
    "load_aliases",
]
