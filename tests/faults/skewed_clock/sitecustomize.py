"""A faketime-style hook for fault tests: put this folder on PYTHONPATH and set MP_TEST_CLOCK_SKEW_S.

Python's own clock in that process (``time.time``, ``datetime.now``/``utcnow``) then runs that many seconds
ahead (or behind); the database's and Redis's clocks are untouched, as for a host whose clock drifted.
Test-only: nothing in ``src`` reads this variable.
"""

import datetime as _dt
import os
import time as _time

_SKEW = float(os.environ.get("MP_TEST_CLOCK_SKEW_S", "0") or 0)

if _SKEW:
    _real_time = _time.time
    _Real = _dt.datetime

    def _skewed_time() -> float:
        return _real_time() + _SKEW

    class _SkewedDateTime(_Real):  # type: ignore[misc, valid-type]
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return _Real.fromtimestamp(_skewed_time(), tz)

        @classmethod
        def utcnow(cls):  # type: ignore[no-untyped-def, override]
            return _Real.fromtimestamp(_skewed_time(), _dt.timezone.utc).replace(tzinfo=None)

    _time.time = _skewed_time
    _dt.datetime = _SkewedDateTime  # type: ignore[misc]
