"""The SSH gateway: asyncssh on both legs, every channel request decided by policy.

:mod:`.server` accepts clients (a pathwarden token as the password, or a
certificate from the gateway's SSH CA), :mod:`.upstream` dials the target
with credentials only the gateway holds and a pinned host key, and
:mod:`.channel` relays each session channel (exec, shell, SFTP, legacy scp)
through policy, masking and the session recording.
"""
