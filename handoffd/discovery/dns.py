"""DNS constants shared by the mDNS parts (zeroconf's record codes, query flags)."""

from __future__ import annotations

from zeroconf import DNSQuestionType

MDNS_PORT = 5353
TYPE_PTR, TYPE_SRV, CLASS_IN, FLAGS_QUERY = 12, 33, 1, 0

QM = DNSQuestionType.QM
