"""`st2common.util`: the helper modules Exchange packs import from StackStorm's own library."""
