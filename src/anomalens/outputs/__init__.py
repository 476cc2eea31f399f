"""Everything anomalens writes goes through this package.

- ``atomic``: single files written under a hidden temporary name and renamed (one rule for all);
- ``folders``: the output-folder protocol (marker, lock, staging, commit, overwrite rules, leftovers);
- ``names``: the file names of a run, a report, predictions and an export;
- ``predictions``: predict's resumable staging folder and its writers (rows, heatmaps, masks).

No module outside this package removes or renames a path a user could have given
(``tests/test_architecture.py`` checks the source).
"""

from anomalens.outputs.atomic import atomic_path, write_bytes, write_json, write_text
from anomalens.outputs.folders import staged_directory, staged_update
from anomalens.outputs.marker import output_kind
from anomalens.outputs.names import MARKER_FILE

__all__ = ["MARKER_FILE", "atomic_path", "output_kind", "staged_directory", "staged_update", "write_bytes",
           "write_json", "write_text"]
