"""LAN discovery: markers and TXT records (pure) and the mDNS advertiser/browser."""
