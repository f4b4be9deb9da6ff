"""Add NeVA's special tokens to a SentencePiece model (what NeMo's `add_special_tokens_to_sentencepiece.py`
does, without protoc and without its two failure modes).

NeVA's `llama_2` / `v1` templates hard-code the ids of `<extra_id_0>`..`<extra_id_7>` as the eight ids just
past the original vocabulary (32000-32007 for Llama-2), so the tokens are appended in order. They must be
USER_DEFINED pieces: only those are matched inside raw text; CONTROL pieces are never produced by `encode`.
NeMo's script silently appends a duplicate when a token already exists with another type, which writes a
model SentencePiece refuses to load; here that is refused, and re-running on a patched model is a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2

from neva_prep import storage
from neva_prep.errors import BadInput

# Built at import time from a descriptor: no static types for mypy to see.
ModelProto: Any = sentencepiece_model_pb2.ModelProto  # type: ignore[attr-defined]

DEFAULT_TOKENS: tuple[str, ...] = tuple(f"<extra_id_{i}>" for i in range(8))
USER_DEFINED: int = ModelProto.SentencePiece.USER_DEFINED  # 4
CONTROL: int = ModelProto.SentencePiece.CONTROL  # 3
_TYPE_NAMES: dict[int, str] = {v: k for k, v in ModelProto.SentencePiece.Type.items()}


@dataclass(frozen=True)
class PatchResult:
    """What `patch_tokenizer` did: the id of every requested token and how many were new."""

    source: str
    destination: str
    tokens: tuple[str, ...]
    ids: tuple[int, ...]
    added: int

    def summary(self) -> str:
        head = (
            f"patched {storage.redact(self.source)} -> {storage.redact(self.destination)}: "
            f"{self.added} token(s) added, {len(self.tokens) - self.added} already present"
        )
        return "\n".join([head, *(f"  {t} -> {i}" for t, i in zip(self.tokens, self.ids, strict=True))])


def check_tokens(tokens: Sequence[str]) -> tuple[str, ...]:
    """Refuse token lists that cannot give one id per token: empty, duplicated, or containing whitespace
    (SentencePiece turns spaces into '▁' before matching, so such a piece could never be produced)."""
    tokens = tuple(tokens)
    if not tokens:
        raise BadInput("no tokens to add")
    seen: set[str] = set()
    for token in tokens:
        if not token:
            raise BadInput("an empty token was requested")
        if any(c.isspace() for c in token):
            raise BadInput(f"token {token!r} contains whitespace, which SentencePiece can never match")
        if token in seen:
            raise BadInput(f"token {token!r} is requested twice")
        seen.add(token)
    return tokens


def parse_model(model: bytes, source: str = "tokenizer") -> Any:
    """Parse a serialized SentencePiece model, refusing anything SentencePiece itself would not load."""
    proto = ModelProto()
    try:
        proto.ParseFromString(model)
    except (DecodeError, ValueError):
        raise BadInput(f"{source}: not a SentencePiece model (cannot parse it)") from None
    if not proto.pieces:
        raise BadInput(f"{source}: not a SentencePiece model (no pieces)")
    try:
        spm.SentencePieceProcessor(model_proto=model)
    except (RuntimeError, OSError) as exc:
        raise BadInput(f"{source}: SentencePiece cannot load it ({str(exc).strip()})") from None
    return proto


def patch_tokenizer_bytes(
    model: bytes, tokens: Sequence[str] = DEFAULT_TOKENS, control: bool = False, source: str = "tokenizer"
) -> tuple[bytes, tuple[int, ...], int]:
    """Return (patched model, id of each token, number added). Pure: bytes in, bytes out.

    A token already present with the requested type keeps its id; when every token is present the input
    bytes are returned unchanged, so re-running is byte-identical. `source` only names the model in errors.
    """
    tokens = check_tokens(tokens)
    proto = parse_model(model, source)
    wanted = CONTROL if control else USER_DEFINED
    existing = {p.piece: (i, p.type) for i, p in enumerate(proto.pieces)}
    ids: list[int] = []
    added = 0
    for token in tokens:
        if token in existing:
            index, kind = existing[token]
            if kind != wanted:
                raise BadInput(
                    f"{source}: token {token!r} already exists as a {_TYPE_NAMES.get(kind, kind)} piece "
                    f"(id {index}), not {_TYPE_NAMES[wanted]}"
                )
            ids.append(index)
            continue
        piece = proto.pieces.add()
        piece.piece = token
        piece.score = 0.0
        piece.type = wanted
        ids.append(len(proto.pieces) - 1)
        added += 1
    if not added:
        return model, tuple(ids), 0
    patched = proto.SerializeToString(deterministic=True)
    spm.SentencePieceProcessor(model_proto=patched)  # our own output must load; fail loudly if not
    return patched, tuple(ids), added


def patch_tokenizer(
    source: str, destination: str, *, tokens: Sequence[str] = DEFAULT_TOKENS, control: bool = False
) -> PatchResult:
    """Read the SentencePiece model at `source`, add `tokens`, write it atomically to `destination`."""
    tokens = check_tokens(tokens)
    patched, ids, added = patch_tokenizer_bytes(
        storage.read_bytes(source), tokens, control, source=storage.redact(source)
    )
    storage.write_bytes(destination, patched)
    return PatchResult(source, destination, tokens, ids, added)
