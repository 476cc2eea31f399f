"""One file per detector. Importing this package registers them all (see anomalens.detector)."""

from anomalens.models import padim  # noqa: F401
from anomalens.models import patchcore  # noqa: F401
from anomalens.models import spade  # noqa: F401
from anomalens.models import mahalanobis  # noqa: F401
from anomalens.models import stpm  # noqa: F401
from anomalens.models import anogan  # noqa: F401
from anomalens.models import efficientgan  # noqa: F401
from anomalens.models import ganomaly  # noqa: F401
from anomalens.models import mlp_ae  # noqa: F401
from anomalens.models import cae  # noqa: F401
from anomalens.models import efficientad  # noqa: F401
from anomalens.models import reverse_distillation  # noqa: F401
from anomalens.models import draem  # noqa: F401
from anomalens.models import simplenet, glass  # noqa: F401
from anomalens.models import supersimplenet  # noqa: F401
from anomalens.models import fastflow, cflow  # noqa: F401
from anomalens.models import ensemble  # noqa: F401
