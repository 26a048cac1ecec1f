"""Tests of the device daemon core: real daemon processes, a real server, curl and the SDK."""
