"""One Arrow schema per table: the single source of truth for column names and types.

Each module `schemas/<table>.py` defines SCHEMA, SCHEMA_VERSION and PARTITION_COLS; a new module is a new table
(`TABLES` finds it by its file name, so adding a table touches only its schema module).
"""

import importlib
import pkgutil
from types import ModuleType

TABLES: dict[str, ModuleType] = {
    module.name: importlib.import_module(f"{__name__}.{module.name}")
    for module in pkgutil.iter_modules(__path__)
    if not module.name.startswith("_")
}
