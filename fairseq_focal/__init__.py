"""fairseq user-dir of focal-calibration (Mukhoti et al., NeurIPS 2020, §5.2).

    fairseq-train DATA --user-dir fairseq_focal --criterion focal_loss --gamma 1 ...
    fairseq-generate DATA --user-dir fairseq_focal --task translation_temperature_sweep --temperatures 0.8,1,1.2 ...

Importing it registers the ``focal_loss`` criterion and the ``translation_temperature_sweep`` and
``translation_nll_dynamics`` tasks, and applies two small fairseq compatibility fixes, logged once (see
:mod:`fairseq_focal.compat`; ``FAIRSEQ_FOCAL_COMPAT=none`` turns them off).
"""

from fairseq_focal import compat

compat.apply()

from fairseq_focal.criterions import focal_loss  # noqa: E402,F401  (registers the criterion)
from fairseq_focal.tasks import nll_dynamics, temperature_sweep  # noqa: E402,F401  (registers the tasks)
