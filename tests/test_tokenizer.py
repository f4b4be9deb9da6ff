"""`neva-prep tokenizer patch` on a real (tiny) SentencePiece model, locally and on S3."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from conftest import neva
from neva_prep import storage
from neva_prep.errors import BadInput
from neva_prep.model.tokenizer import DEFAULT_TOKENS, patch_tokenizer_bytes
from neva_prep.sample import train_tokenizer

VOCAB = 384


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(path, VOCAB)
    return path


@pytest.fixture(scope="module")
def model_bytes(spm_model: Path) -> bytes:
    return spm_model.read_bytes()


def _types(model: bytes) -> list[int]:
    proto = model_pb2.ModelProto()
    proto.ParseFromString(model)
    return [p.type for p in proto.pieces]


def test_patch_appends_user_defined_tokens_that_encode_as_one_piece(spm_model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out" / "tokenizer_neva.model"
    proc = neva("tokenizer", "patch", str(spm_model), str(dst))
    assert proc.returncode == 0, proc.stderr
    expected = {t: VOCAB + i for i, t in enumerate(DEFAULT_TOKENS)}
    for token, token_id in expected.items():
        assert f"{token} -> {token_id}" in proc.stdout

    sp = spm.SentencePieceProcessor(model_file=str(dst))
    assert sp.get_piece_size() == VOCAB + 8
    assert [sp.piece_to_id(t) for t in DEFAULT_TOKENS] == list(expected.values())
    assert expected["<extra_id_3>"] in sp.encode("a <extra_id_3> b")
    # the original vocabulary is untouched: same pieces, same ids
    original = spm.SentencePieceProcessor(model_file=str(spm_model))
    assert [sp.id_to_piece(i) for i in range(VOCAB)] == [original.id_to_piece(i) for i in range(VOCAB)]
    assert _types(dst.read_bytes())[VOCAB:] == [4] * 8


def test_control_tokens_are_not_matched_in_text(spm_model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "control.model"
    proc = neva("tokenizer", "patch", str(spm_model), str(dst), "--control")
    assert proc.returncode == 0, proc.stderr
    sp = spm.SentencePieceProcessor(model_file=str(dst))
    token_id = sp.piece_to_id("<extra_id_3>")
    assert token_id == VOCAB + 3
    assert _types(dst.read_bytes())[VOCAB:] == [3] * 8
    assert token_id not in sp.encode("a <extra_id_3> b")


def test_custom_tokens_in_order(spm_model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "custom.model"
    proc = neva("tokenizer", "patch", str(spm_model), str(dst), "--token", "<video>", "--token", "<image>")
    assert proc.returncode == 0, proc.stderr
    sp = spm.SentencePieceProcessor(model_file=str(dst))
    assert (sp.piece_to_id("<video>"), sp.piece_to_id("<image>")) == (VOCAB, VOCAB + 1)
    assert sp.get_piece_size() == VOCAB + 2


def test_repatching_is_a_byte_identical_no_op(spm_model: Path, tmp_path: Path) -> None:
    once, twice = tmp_path / "once.model", tmp_path / "twice.model"
    assert neva("tokenizer", "patch", str(spm_model), str(once)).returncode == 0
    proc = neva("tokenizer", "patch", str(once), str(twice))
    assert proc.returncode == 0, proc.stderr
    assert "0 token(s) added, 8 already present" in proc.stdout
    assert twice.read_bytes() == once.read_bytes()
    # patching is deterministic: two runs from the same source give the same bytes
    again = tmp_path / "again.model"
    assert neva("tokenizer", "patch", str(spm_model), str(again)).returncode == 0
    assert again.read_bytes() == once.read_bytes()


def test_partially_present_tokens_keep_their_ids(model_bytes: bytes) -> None:
    model = model_bytes
    first, ids1, added1 = patch_tokenizer_bytes(model, ["<a>", "<b>"])
    second, ids2, added2 = patch_tokenizer_bytes(first, ["<b>", "<c>", "<a>"])
    assert (ids1, added1) == ((VOCAB, VOCAB + 1), 2)
    assert (ids2, added2) == ((VOCAB + 1, VOCAB + 2, VOCAB), 1)
    assert spm.SentencePieceProcessor(model_proto=second).get_piece_size() == VOCAB + 3


def test_conflicting_type_is_refused_and_nothing_written(spm_model: Path, tmp_path: Path) -> None:
    user = tmp_path / "user.model"
    assert neva("tokenizer", "patch", str(spm_model), str(user)).returncode == 0
    dst = tmp_path / "control.model"
    proc = neva("tokenizer", "patch", str(user), str(dst), "--control")
    assert proc.returncode == 2
    assert "<extra_id_0>" in proc.stderr and "USER_DEFINED" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == [user]


def test_token_present_as_a_normal_piece_is_refused(model_bytes: bytes) -> None:
    proto = model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    normal = next(p.piece for p in proto.pieces if p.type == 1 and not p.piece.startswith("▁"))
    with pytest.raises(BadInput, match="NORMAL"):
        patch_tokenizer_bytes(model_bytes, [normal])


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["<a>", "<a>"], "twice"),
        (["<a>", ""], "empty"),
        (["<a b>"], "whitespace"),
        ([], "no tokens"),
    ],
)
def test_bad_token_lists_are_refused(model_bytes: bytes, tokens: list[str], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        patch_tokenizer_bytes(model_bytes, tokens)


def test_duplicate_token_on_the_command_line_exits_2(spm_model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dup.model"
    proc = neva("tokenizer", "patch", str(spm_model), str(dst), "--token", "<x>", "--token", "<x>")
    assert proc.returncode == 2 and "twice" in proc.stderr
    assert not dst.exists()


def test_missing_or_invalid_source_exits_2_naming_the_file(tmp_path: Path) -> None:
    dst = tmp_path / "out.model"
    missing = tmp_path / "nope.model"
    proc = neva("tokenizer", "patch", str(missing), str(dst))
    assert proc.returncode == 2 and str(missing) in proc.stderr
    garbage = tmp_path / "config.json"
    garbage.write_text('{"model_type": "llama"}\n')
    proc = neva("tokenizer", "patch", str(garbage), str(dst))
    assert proc.returncode == 2
    assert str(garbage) in proc.stderr and "not a SentencePiece model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not dst.exists()


def test_truncated_model_is_refused(model_bytes: bytes) -> None:
    with pytest.raises(BadInput, match=r"half\.model: .*SentencePiece"):
        patch_tokenizer_bytes(model_bytes[: len(model_bytes) // 2], source="half.model")


@pytest.mark.s3
def test_s3_round_trip(spm_model: Path, s3: str) -> None:
    src, dst = f"{s3}/llama/tokenizer.model", f"{s3}/out/tokenizers/tokenizer_neva.model"
    storage.write_bytes(src, spm_model.read_bytes())
    proc = neva("tokenizer", "patch", src, dst)
    assert proc.returncode == 0, proc.stderr
    assert "testing-secret" not in proc.stdout + proc.stderr
    patched = storage.read_bytes(dst)
    sp = spm.SentencePieceProcessor(model_proto=patched)
    assert sp.piece_to_id("<extra_id_7>") == VOCAB + 7
    # a refused patch leaves nothing at an object-store destination either
    refused = f"{s3}/out/refused.model"
    proc = neva("tokenizer", "patch", dst, refused, "--control")
    assert proc.returncode == 2
    assert not storage.exists(refused)
