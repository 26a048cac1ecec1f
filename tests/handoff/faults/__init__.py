"""The lab fault suite: handoffs under network faults, crashes, restarts, a full disk and load."""
