"""SSH file transfer protocols, as sans-I/O parsers for the SSH gateway.

- :mod:`.sftp`: SFTP version 3 (the ``sftp`` subsystem; also what ``scp``
  speaks since OpenSSH 9.0): packet framing, request and reply decoding, the
  policy view of each request and per-file tracking.
- :mod:`.scp`: the legacy rcp protocol of ``scp -t`` / ``scp -f`` exec
  channels (``scp -O``): the command line and the control-line stream.

Nothing here touches sockets, clocks or asyncio: the gateway feeds bytes and
acts on what comes back.
"""
