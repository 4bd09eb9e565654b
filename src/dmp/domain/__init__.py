"""The functional core of dmp: pure, synchronous, no I/O.

Nothing here reads the clock, the network, the disk or global randomness:
``now`` (int POSIX seconds) and random bytes come in as parameters. Record
codecs, signing, scope authorization, merge and cursor logic live here.
"""
