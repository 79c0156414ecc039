"""Masking: secrets and personal data replaced in bytes on their way to a client or a log.

Theory of operation
-------------------

A detector (:mod:`.detectors`) describes one kind of secret twice: as a
Hyperscan *prefilter* pattern, fast and a little too generous, and as a
Python regular expression that *confirms* a hit, checks its boundaries and
names the exact bytes to replace. Validators (entropy, Luhn, IBAN mod-97, a
JWT header that parses, a dictionary of placeholders) have the last word.

:func:`engine_for` compiles every active prefilter, plus each configured
literal, into one Hyperscan database per :class:`MaskOptions` value. A call
to :meth:`MaskEngine.mask` makes one Hyperscan pass; with no hit it returns
its input object untouched, which is the common case and costs only the
scan. Each hit is confirmed in a bounded window around it, overlapping
confirmed spans merge, and the spans are replaced by markers such as
``[MASKED:github-token]``.

Prefilters use no boundary assertions, so :meth:`MaskEngine.candidates`
over a concatenation of values finds a hit in every value that ``mask``
would change: the gateway scans a whole buffer of DataRow frames once and
re-examines only the frames a candidate touches, with
:meth:`MaskEngine.mask_value` (which also masks whole values of sensitive
columns such as ``password`` or ``api_key``).

:class:`StreamMasker` masks output that arrives in pieces (a ``COPY TO
STDOUT``, a job log), releasing whole lines as they complete and holding at
most ``max_hold`` bytes.

Masking fails closed: if anything raises, the value becomes
``[MASKED:error]``. The package does no I/O and imports no asyncio, socket
or clock.
"""

from pathwarden.masking.engine import MaskEngine, MaskResult, engine_for
from pathwarden.masking.options import PII_DETECTORS, MaskOptions
from pathwarden.masking.stream import StreamMasker

__all__ = ["PII_DETECTORS", "MaskEngine", "MaskOptions", "MaskResult", "StreamMasker",
           "engine_for"]
