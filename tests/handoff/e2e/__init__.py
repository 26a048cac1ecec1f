"""The lab end-to-end suite: real daemons, real multicast, real aiortc in network namespaces."""
