"""Session recordings: a versioned, tamper-evident, append-only event stream per session.

Theory of operation
-------------------

A session's recording is a file of lines: a header, then one canonical JSON
event per line (:mod:`.format`), each hashed onto the previous one. The
gateway appends an event with one ``write()`` before it acts on it
(:class:`RecordingWriter`): that survives ``kill -9`` of the gateway; fsync
for power loss is a separate policy (:class:`GroupSync`). A finished
recording is gzip-compressed (:meth:`RecordingWriter.finish`), its final hash
is folded into a per-gateway chain of sessions whose head the gateway signs
(:mod:`.verify`), and it is kept in a :class:`RecordingStorage` (a directory
tree or an S3 bucket). :func:`read_recording` reads live, finished and
damaged files; :func:`verify_recording` names what was edited, removed,
reordered or cut. The format is specified in ``docs/recording.md``.
:mod:`.terminal` shows an SSH session's terminal: :func:`to_asciicast` for the
asciinema player, :class:`TerminalTranscript` for ``pathwarden replay``.

No asyncio and no sockets here: the calls block (appends briefly, finishing
and storage for longer), and the gateway runs the long ones in a worker thread.
"""

from pathwarden.recording.errors import (
    RecordingError,
    RecordingFormatError,
    RecordingFull,
    RecordingNotFound,
)
from pathwarden.recording.format import (
    EVENT_TYPES,
    FORMAT_VERSION,
    Event,
    FormatSpec,
    Header,
    Problem,
    canonical,
    decode_line,
    encode_event,
    event_hash,
    header_hash,
    read_header,
)
from pathwarden.recording.reader import Recording, follow, iter_events, read_recording
from pathwarden.recording.storage import FileStorage, RecordingStorage, S3Storage, location_for
from pathwarden.recording.terminal import (
    ChannelInfo,
    NoTerminalChannel,
    TerminalError,
    TerminalTranscript,
    channels,
    select_channel,
    to_asciicast,
)
from pathwarden.recording.verify import (
    GENESIS_LINK,
    ChainEntry,
    Checkpoint,
    SignedHead,
    chain_link,
    make_checkpoint,
    sign_head,
    verify_chain,
    verify_events,
    verify_head,
    verify_recording,
)
from pathwarden.recording.writer import (
    FinishedRecording,
    GroupSync,
    RecordingWriter,
    SyncReport,
    finish_orphan,
)

__all__ = [
    "EVENT_TYPES", "FORMAT_VERSION", "GENESIS_LINK", "ChainEntry", "ChannelInfo", "Checkpoint",
    "Event", "FileStorage", "FinishedRecording", "FormatSpec", "GroupSync", "Header",
    "NoTerminalChannel", "Problem", "Recording", "RecordingError", "RecordingFormatError",
    "RecordingFull", "RecordingNotFound", "RecordingStorage", "RecordingWriter", "S3Storage",
    "SignedHead", "SyncReport", "TerminalError", "TerminalTranscript", "canonical",
    "chain_link", "channels", "decode_line", "encode_event", "event_hash", "finish_orphan",
    "follow", "header_hash", "iter_events", "location_for", "make_checkpoint", "read_header",
    "read_recording", "select_channel", "sign_head", "to_asciicast", "verify_chain",
    "verify_events", "verify_head", "verify_recording",
]
