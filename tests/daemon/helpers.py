"""Moved to tests/support/processes.py; the names stay importable from here for older branches."""

from tests.support.processes import CURL as CURL
from tests.support.processes import DaemonProcess as DaemonProcess
from tests.support.processes import accepts as accepts
from tests.support.processes import curl as curl
