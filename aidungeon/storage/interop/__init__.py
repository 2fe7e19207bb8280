"""Stories in and out: `importers` reads other games' saves, `exporters` writes md, txt or html."""

from aidungeon.storage.interop.exporters import EXPORT_FORMATS, export_story
from aidungeon.storage.interop.importers import IMPORT_FORMATS, detect_format, import_file

__all__ = ["EXPORT_FORMATS", "IMPORT_FORMATS", "detect_format", "export_story", "import_file"]
