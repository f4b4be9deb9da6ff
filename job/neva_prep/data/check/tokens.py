"""Token lengths as NeVA's dataset item has them: the patched tokenizer, batch-encoded.

NeMo 24.05 builds the tokenizer with `sentencepiece_legacy: False`, so `text_to_ids` is SentencePiece's
plain `encode` (no BOS / EOS added; `nemo/collections/common/tokenizers/sentencepiece_tokenizer.py`). NeVA's
`tokenize` (`neva_dataset.py`) encodes the prompt, keeps `min(L - 1, encoder_seq_length) + 1` ids and, with
`add_extra_token = 1` (the default: `no_seqlen_plus_one_input_tokens` unset), drops the last one for
`tokens` (the labels are the same ids shifted by one). So an item's `tokens` holds L - 1 ids when nothing is
cut, and a record is truncated when L - 1 > `encoder_seq_length`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sentencepiece as spm

from neva_prep import storage
from neva_prep.cpus import usable_cpus
from neva_prep.data.check.templates import Prompt
from neva_prep.errors import BadInput
from neva_prep.model.tokenizer import DEFAULT_TOKENS, USER_DEFINED, parse_model

ADD_EXTRA_TOKEN = 1


@dataclass(frozen=True)
class Tokenizer:
    """A loaded, checked `tokenizer_neva.model`."""

    url: str
    processor: spm.SentencePieceProcessor
    size: int

    def lengths(self, prompts: Sequence[Prompt]) -> list[int]:
        """`tokens` length of each prompt's item before truncation (one multi-threaded batch encode)."""
        if not prompts:
            return []
        ids = self.processor.encode([p.text for p in prompts], num_threads=usable_cpus())
        return [len(i) + p.patch_tokens - ADD_EXTRA_TOKEN for i, p in zip(ids, prompts, strict=True)]


def load_tokenizer(url: str) -> Tokenizer:
    """Load the patched tokenizer; refuse one whose `<extra_id_N>` are not user-defined pieces (CONTROL pieces
    or none at all: the templates' tokens would then be split into characters, and every count be wrong)."""
    data = storage.read_bytes(url)
    proto = parse_model(data, storage.redact(url))
    kinds = {p.piece: p.type for p in proto.pieces}
    missing = [t for t in DEFAULT_TOKENS if kinds.get(t) != USER_DEFINED]
    if missing:
        raise BadInput(
            f"{storage.redact(url)}: {missing[0]} is not a user-defined piece: give the patched "
            "tokenizer_neva.model (neva-prep tokenizer patch, without --control)"
        )
    return Tokenizer(url, spm.SentencePieceProcessor(model_proto=data), len(data))
