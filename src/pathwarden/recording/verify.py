"""Verifying recordings, the chain of sessions, and signed heads.

Theory of operation
-------------------

Inside one recording, every event's ``h`` covers its content and the previous
event's ``h`` (the first one covers the header), so :func:`verify_events`
finds an event that was *edited* (its hash no longer matches), *removed* (a
seq gap, or a ``prev`` that matches no neighbour), *reordered* (seq going
backwards or repeating), a changed header (*bad_header*) and a cut end
(*truncated*: no ``session_end`` although the session is not live).

Editing every hash after a change keeps a single file consistent, so the
files are also chained *across* sessions: when a recording is finished its
final hash is folded into a per-gateway chain,
``link[n] = chain_link(link[n-1], session_id, final_hash)`` starting from
:data:`GENESIS_LINK`, and the gateway periodically signs the head of that chain
with its Ed25519 key (:func:`sign_head`). Anyone holding the public key can
then check every recording up to the signed position. Retention prunes old
recordings: before it does, a signed :class:`Checkpoint` names the link at the
cut, and :func:`verify_chain` starts from it instead of from genesis.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from pathwarden.recording.errors import RecordingFormatError
from pathwarden.recording.format import Event, Header, Problem, canonical, format_for
from pathwarden.recording.reader import read_recording

GENESIS_LINK = "0" * 64


def _key(p: Problem) -> tuple[int, str]:
    return (-1 if p.seq is None else p.seq, p.kind)


def verify_events(
    header: Header | None, events: Sequence[Event], *, live: bool = False,
    final_hash: str | None = None,
) -> list[Problem]:
    """Problems with the hash chain of one recording's events, in seq order.

    ``live``: the session is still running, so a missing ``session_end`` is not
    a problem. ``final_hash``: the hash recorded for this session in the
    session chain; a recording that does not end there was cut or extended.
    """
    if header is None:
        return [Problem("bad_header", None, "the recording has no readable header")]
    problems: list[Problem] = []
    event_hash = format_for(header.version).event_hash
    by_seq: dict[int, Event] = {}
    highest = -1
    for e in events:
        if event_hash(e.prev, e.seq, e.t, e.type, e.data) != e.h:
            problems.append(Problem(
                "edited", e.seq,
                f"event {e.seq} ({e.type}) does not match its hash: it was changed after "
                "it was written",
            ))
        if e.seq in by_seq:
            problems.append(Problem("reordered", e.seq, f"event {e.seq} appears twice"))
            continue
        by_seq[e.seq] = e
        if e.seq < highest:
            problems.append(Problem(
                "reordered", e.seq, f"event {e.seq} comes after event {highest}",
            ))
        highest = max(highest, e.seq)

    expected = 0
    for s in sorted(by_seq):
        if s > expected:
            span = f"event {expected} is" if s == expected + 1 else f"events {expected}-{s - 1} are"
            problems.append(Problem("removed", expected, f"{span} missing"))
        expected = s + 1

    for s, e in by_seq.items():
        if s == 0:
            if e.prev != header.hash:
                problems.append(Problem(
                    "bad_header", None,
                    "the header was changed: event 0 chains to a different header",
                ))
            continue
        before = by_seq.get(s - 1)
        if before is not None and e.prev != before.h:
            problems.append(Problem(
                "removed", s,
                f"event {s} does not chain to event {s - 1}: an event between them was "
                f"removed or replaced, or event {s - 1} was rewritten",
            ))

    last = by_seq.get(highest)
    if not live and (last is None or last.type != "session_end"):
        problems.append(Problem(
            "truncated", highest + 1,
            f"no session_end after event {highest}: the recording was cut, or the gateway "
            "stopped before the session ended",
        ))
    if final_hash is not None and last is not None and last.h != final_hash:
        ends = [e.seq for e in by_seq.values() if e.h == final_hash]
        if ends:
            problems.append(Problem(
                "edited", ends[0] + 1,
                f"events after {ends[0]} were appended after the session was finished",
            ))
        else:
            problems.append(Problem(
                "removed", highest + 1,
                "the recording does not end at the final hash in the session chain: "
                "its end was removed or rewritten",
            ))
    problems.sort(key=_key)
    return problems


def verify_recording(
    path: Path, *, live: bool = False, final_hash: str | None = None,
) -> list[Problem]:
    """Read and verify a recording file: the reader's problems and the chain's, deduplicated."""
    rec = read_recording(path)
    problems = list(rec.problems)
    unreadable = {p.seq for p in problems if p.kind == "edited"}
    seen = {(p.kind, p.seq) for p in problems}
    if rec.header is not None:
        for p in verify_events(rec.header, rec.events, live=live, final_hash=final_hash):
            if (p.kind, p.seq) in seen:
                continue
            if p.kind == "removed" and p.seq in unreadable:
                continue  # the line is there, only unreadable: already reported as edited
            if p.kind == "removed" and p.seq is not None and p.seq - 1 in unreadable:
                continue  # the chain break right after an unreadable line
            problems.append(p)
            seen.add((p.kind, p.seq))
    problems.sort(key=_key)
    return problems


# -- the session chain ---------------------------------------------------------


def chain_link(prev_link: str, session_id: str, final_hash: str) -> str:
    """The next link of the session chain: sha256 over the previous link, session, final hash."""
    body = canonical({"final": final_hash, "prev": prev_link, "session": session_id})
    return hashlib.sha256(b"pwchain1:" + body).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """One finished session in the chain, at ``position`` (1, 2, ...)."""

    position: int
    session_id: str
    final_hash: str
    link: str


_S = TypeVar("_S", bound="_Signed")


@dataclass(frozen=True, slots=True)
class _Signed:
    purpose: ClassVar[str] = ""
    gateway: str
    position: int
    link: str
    signed_at: float
    signature: str  # base64 Ed25519 signature of message()

    def message(self) -> bytes:
        """The bytes signed: a purpose tag and the canonical JSON of the fields."""
        return f"pathwarden {self.purpose} v1\n".encode() + canonical({
            "gateway": self.gateway, "link": self.link, "position": self.position,
            "signed_at": self.signed_at,
        })

    def to_dict(self) -> dict[str, Any]:
        return {"purpose": self.purpose, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[_S], obj: dict[str, Any]) -> _S:
        if obj.get("purpose", cls.purpose) != cls.purpose:
            raise RecordingFormatError(f"not a signed {cls.purpose}: {obj.get('purpose')!r}")
        try:
            value = cls(
                gateway=str(obj["gateway"]), position=int(obj["position"]),
                link=str(obj["link"]), signed_at=float(obj["signed_at"]),
                signature=str(obj["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordingFormatError(f"malformed signed {cls.purpose}: {exc}") from None
        return value

    @classmethod
    def from_json(cls: type[_S], text: str) -> _S:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordingFormatError(f"signed {cls.purpose} is not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise RecordingFormatError(f"signed {cls.purpose} is not a JSON object")
        return cls.from_dict(obj)


@dataclass(frozen=True, slots=True)
class SignedHead(_Signed):
    """The gateway's signature over the chain link at ``position``."""

    purpose: ClassVar[str] = "head"


@dataclass(frozen=True, slots=True)
class Checkpoint(_Signed):
    """A signed link at a retention cut: the chain is verified from here after pruning."""

    purpose: ClassVar[str] = "checkpoint"


def _sign(
    cls: type[_S], private_key: Ed25519PrivateKey, gateway_id: str, position: int, link: str,
    signed_at: float,
) -> _S:
    unsigned = cls(gateway_id, position, link, signed_at, "")
    signature = private_key.sign(unsigned.message())
    return cls(gateway_id, position, link, signed_at, base64.b64encode(signature).decode())


def sign_head(
    private_key: Ed25519PrivateKey, gateway_id: str, position: int, link: str,
    signed_at: float,
) -> SignedHead:
    """Sign the chain ``link`` at ``position``."""
    return _sign(SignedHead, private_key, gateway_id, position, link, signed_at)


def make_checkpoint(
    private_key: Ed25519PrivateKey, gateway_id: str, position: int, link: str,
    signed_at: float,
) -> Checkpoint:
    """Sign the chain ``link`` at ``position`` as the start for verifiers after a prune."""
    return _sign(Checkpoint, private_key, gateway_id, position, link, signed_at)


def verify_head(public_key: Ed25519PublicKey, head: SignedHead | Checkpoint) -> bool:
    """True if ``head`` (or a checkpoint) carries a valid signature of ``public_key``."""
    try:
        signature = base64.b64decode(head.signature, validate=True)
        public_key.verify(signature, head.message())
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_chain(
    entries: Sequence[ChainEntry], public_key: Ed25519PublicKey | None = None, *,
    head: SignedHead | None = None, checkpoint: Checkpoint | None = None,
) -> list[Problem]:
    """Problems with a run of chain entries (``seq`` of a problem is the chain position).

    Entries must follow each other from position 1, or from the position after
    ``checkpoint``. ``head`` must sign a link that the entries reproduce. A
    checkpoint or head needs ``public_key``.
    """
    problems: list[Problem] = []
    position, link = 0, GENESIS_LINK
    for signed in (checkpoint, head):
        if signed is None:
            continue
        if public_key is None:
            problems.append(Problem(
                "bad_signature", signed.position,
                f"a signed {signed.purpose} needs the gateway's public key to be checked",
            ))
        elif not verify_head(public_key, signed):
            problems.append(Problem(
                "bad_signature", signed.position,
                f"the signature of the {signed.purpose} at position {signed.position} is "
                "not valid for this key",
            ))
    if checkpoint is not None:
        position, link = checkpoint.position, checkpoint.link
    links = {position: link}
    # After a mismatch the true previous link is either the one recomputed from the
    # entry or the one stored with it (whichever was not altered): accepting both
    # names the altered entry once instead of every entry after it.
    previous = [link]
    for entry in entries:
        if entry.position <= position and checkpoint is not None:
            continue  # before the cut: kept, but the checkpoint is the starting point
        if entry.position != position + 1:
            problems.append(Problem(
                "chain_broken", position + 1,
                f"chain position {position + 1} is missing (next is {entry.position}): "
                "sessions were removed",
            ))
            previous = [entry.link]  # go on from what is there; the gap is reported
        else:
            expected = [chain_link(p, entry.session_id, entry.final_hash) for p in previous]
            if entry.link in expected:
                previous = [entry.link]
            else:
                problems.append(Problem(
                    "chain_broken", entry.position,
                    f"session {entry.session_id} at chain position {entry.position} does "
                    "not match its link: its final hash, id or link was changed",
                ))
                previous = [expected[0], entry.link]
        position = entry.position
        links[position] = previous[0]
    if head is not None:
        if head.position not in links:
            problems.append(Problem(
                "chain_broken", head.position,
                f"a head was signed at chain position {head.position} but the chain "
                f"ends at {position}: sessions were removed from its end",
            ))
        elif links[head.position] != head.link and ("chain_broken", head.position) not in {
            (p.kind, p.seq) for p in problems
        }:
            problems.append(Problem(
                "chain_broken", head.position,
                f"the signed head at position {head.position} does not match the chain",
            ))
    problems.sort(key=_key)
    return problems
