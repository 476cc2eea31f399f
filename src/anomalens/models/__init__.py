"""One file per detector. Importing this package registers them all (see anomalens.detector)."""

from anomalens.models import padim  # noqa: F401
