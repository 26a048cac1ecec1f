"""Test helpers shared by every test package: waiting on conditions, real processes."""
