"""Build, load, apply and decode the char, word and bpe tokenizers (stored as `tokenizer.json`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from charlm.config import setting_choices
from charlm.errors import DataError, UsageError

if TYPE_CHECKING:
    from charlm.config import DataConfig

LEVELS = setting_choices("data.level")
_NO_CAP = 2**31 - 1  # the word trainer's vocab_size for "keep every word"

CHAR_UNK = "<unk>"
SENTENCE_START, SENTENCE_END, UNKNOWN_TOKEN = "SENTENCE_START", "SENTENCE_END", "UNKNOWN_TOKEN"
WORD_SPECIALS = (SENTENCE_START, SENTENCE_END, UNKNOWN_TOKEN)
# segments="lines" (pytorch/examples word_language_model): every line, empty ones included, ends
# in LINE_END and nothing marks a start.
LINE_END = "<eos>"
LINE_SPECIALS = (LINE_END, UNKNOWN_TOKEN)
SEGMENTS = setting_choices("data.segments")
WORD_SPLITS = setting_choices("data.word_split")
# Where segments="sentences" ends a sentence (docs/results.md, "Sentence splitting"). pysbd: the
# pysbd package (rule-based sentence boundary disambiguation, pure Python, nothing downloaded)
# decides at each place the rule below offers; rules: that rule alone, with 15 abbreviations
# (the splitter of earlier charlm versions, still what a word tokenizer that records no splitter uses).
SENTENCE_SPLITS = setting_choices("data.sentence_split")
LEGACY_SENTENCE_SPLIT = "rules"  # a word tokenizer or prepared data that names none used this
# A word tokenizer built with sentence_split="pysbd" says so in its post-processor: an entry
# of this name among TemplateProcessing's special tokens, which no template uses, so encoding
# and tokenizer.json's other readers (transformers) are unchanged; its absence means "rules".
_SENTENCE_SPLIT_MARK = "charlm:sentence_split="

# Words, numbers (3.14, 1,000), English clitics ('s, 't, 're, ...), single punctuation marks, and
# WikiText's own "<unk>" kept whole. Applied after lower-casing and splitting on whitespace, so
# no token holds a space and each word is in the vocabulary once (Metaspace pre-tokenizing
# would keep "▁word" and "word" apart, and lose the space before an unknown word).
_WORD_PATTERN = r"<unk>|['’](?:s|t|re|ve|ll|d|m)\b|\d+(?:[.,]\d+)*|\w+|[^\w\s]"

_ABBREVIATIONS = frozenset(
    "mr. mrs. ms. dr. prof. st. vs. jr. sr. e.g. i.e. no. fig. approx. cf.".split()
)
# A sentence ends after . ! or ? (maybe followed by a closing quote or bracket) and whitespace.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)\]])\s+")


def check_level(level: str) -> str:
    """Return `level` if it is one of LEVELS, else raise a UsageError naming the choices."""
    if level not in LEVELS:
        raise UsageError(f"unknown tokenizer level {level!r}; use one of: {', '.join(LEVELS)}")
    return level


def split_sentences(text: str, splitter: str = "pysbd") -> list[str]:
    """Split text into sentences: at every line break, and inside a line where `splitter` ends
    a sentence. Lines are stripped; empty sentences are dropped.

    Both splitters break only after . ! or ? (maybe followed by a closing quote or bracket) and
    whitespace, never inside a word, a number or a URL. "rules" breaks at every such place
    unless the word before is one of 15 common abbreviations (Mr., e.g., ...): "The U.S. Army"
    becomes two sentences. "pysbd" keeps the places where pysbd ends a sentence: titles,
    initials, times (5 p.m.), abbreviations, decimals and quotes read as a reader reads them.
    """
    if splitter not in SENTENCE_SPLITS:
        raise UsageError(
            f"sentence_split {splitter!r} must be one of: {', '.join(SENTENCE_SPLITS)}"
        )
    sentences: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if splitter == "rules":
            sentences += _split_by_rules(line)
            continue
        breaks = [match.span() for match in _SENTENCE_BREAK.finditer(line)]
        start = 0
        # Most lines offer no place at all (a title, a one-sentence comment): pysbd is skipped.
        for cut, resume in _pysbd_breaks(line, breaks) if breaks else ():
            sentences.append(line[start:cut])
            start = resume
        sentences.append(line[start:])
    return sentences


def _split_by_rules(line: str) -> list[str]:
    """sentence_split="rules" on one stripped line."""
    sentences: list[str] = []
    pending = ""
    for piece in _SENTENCE_BREAK.split(line):
        pending = f"{pending} {piece}" if pending else piece
        last_word = pending.rsplit(None, 1)[-1].lower() if pending else ""
        if last_word not in _ABBREVIATIONS:
            if pending:
                sentences.append(pending)
            pending = ""
    if pending:
        sentences.append(pending)
    return sentences


# pysbd's time grows faster than the length of what it is given (about 0.1 MB/s on lines of
# a few hundred characters, 0.016 MB/s on one line of 110,000, measured on the Reddit sample):
# a long line is handed over in windows of PYSBD_WINDOW characters, each starting where pysbd
# ended a sentence; its decisions in the last PYSBD_MARGIN characters, which lack what follows,
# are made again in the next window.
PYSBD_WINDOW = 2000
PYSBD_MARGIN = 500


def _pysbd_breaks(line: str, breaks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Those of `breaks` (the spans of whitespace after a candidate sentence end) at which
    pysbd ends a sentence of `line`."""
    import pysbd  # here: only word-level sentence splitting needs it

    segmenter = pysbd.Segmenter(language="en", clean=False)  # one per call: it keeps state
    kept: list[tuple[int, int]] = []
    start, first = 0, 0  # the window's start; the first of `breaks` not judged yet
    while first < len(breaks):
        end = min(len(line), start + PYSBD_WINDOW)
        limit = len(line) if end == len(line) else end - PYSBD_MARGIN
        ends = _segment_ends(segmenter, line, start, end)
        next_start = limit
        while first < len(breaks) and breaks[first][0] < limit:
            cut, resume = breaks[first]
            first += 1
            # pysbd's sentence ends at the mark (or its closing quote), before the whitespace.
            if any(position in ends for position in range(cut - 1, resume + 1)):
                kept.append((cut, resume))
                next_start = resume
        start = next_start if next_start > start else limit
    return kept


def _segment_ends(segmenter: object, line: str, start: int, end: int) -> set[int]:
    """Where pysbd's sentences of line[start:end] end (offsets into `line`, trailing whitespace
    excluded). Each sentence is found in the text, so one that pysbd changed is ignored."""
    window = line[start:end]
    ends: set[int] = set()
    position = 0
    for sentence in segmenter.segment(window):  # type: ignore[attr-defined]
        sentence = sentence.strip()
        found = window.find(sentence, position) if sentence else -1
        if found >= 0:
            position = found + len(sentence)
            ends.add(start + position)
    return ends


def split_lines(text: str) -> list[str]:
    """The lines of `text` as Python's `for line in file` reads them, without the line break.

    Empty lines count; a final line break does not start another line.
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def build_tokenizer(
    level: str,
    text_chunks: Iterable[str],
    vocab_size: int,
    *,
    lowercase: bool = True,
    segments: str = "sentences",
    word_split: str = "rules",
    sentence_split: str = "pysbd",
) -> Tokenizer:
    """Train a tokenizer of `level` on the text; `vocab_size` caps word/bpe (specials included).

    char ignores `vocab_size`: its vocabulary is `<unk>` (id 0) plus every code point of the text,
    sorted. word: `vocab_size` 0 keeps every word of the text; `lowercase`, `segments`,
    `word_split` and (with segments="sentences") `sentence_split` are stored in the tokenizer,
    so Encoder and StreamDecoder follow them. The vocabulary does not depend on the sentence
    splitter: it counts words. The chunks are read once, so a generator is fine.
    """
    check_level(level)
    if level == "char":
        return _build_char(text_chunks)
    if level == "word":
        if vocab_size < 0:
            raise UsageError(f"vocab_size {vocab_size} is negative; use 0 (no cap) or more")
        if segments not in SEGMENTS:
            raise UsageError(f"segments {segments!r} must be one of: {', '.join(SEGMENTS)}")
        if word_split not in WORD_SPLITS:
            raise UsageError(f"word_split {word_split!r} must be one of: {', '.join(WORD_SPLITS)}")
        if sentence_split not in SENTENCE_SPLITS:
            raise UsageError(
                f"sentence_split {sentence_split!r} must be one of: {', '.join(SENTENCE_SPLITS)}"
            )
        return _build_word(text_chunks, vocab_size, lowercase, segments, word_split, sentence_split)
    if vocab_size < 1:
        raise UsageError(f"vocab_size {vocab_size} is too small; use a positive number")
    return _build_bpe(text_chunks, vocab_size)


def tokenizer_for(data: DataConfig, text_chunks: Iterable[str]) -> Tokenizer:
    """`build_tokenizer` with every data.* setting that shapes a tokenizer taken from `data`,
    so that a caller building one from a config (a fresh model to measure) leaves none at its
    default."""
    return build_tokenizer(
        data.level,
        text_chunks,
        data.vocab_size,
        lowercase=data.lowercase,
        segments=data.segments,
        word_split=data.word_split,
        sentence_split=data.sentence_split,
    )


def _code_points(text: str) -> np.ndarray:
    # "surrogatepass" so a lone surrogate becomes an (unknown) code point instead of an error.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _is_surrogate(code_point: int) -> bool:
    return 0xD800 <= code_point <= 0xDFFF


def _build_char(text_chunks: Iterable[str]) -> Tokenizer:
    seen = np.zeros(0, dtype=np.uint32)
    for chunk in text_chunks:
        seen = np.union1d(seen, np.unique(_code_points(chunk)))
    # Lone surrogates cannot be stored in tokenizer.json (Rust strings); they stay unknown.
    chars = [chr(cp) for cp in seen.tolist() if not _is_surrogate(cp)]
    vocab = {CHAR_UNK: 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=CHAR_UNK))
    # Every code point is its own token, newlines and spaces included; [\s\S] because "." would
    # skip newlines.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def _build_word(
    text_chunks: Iterable[str],
    vocab_size: int,
    lowercase: bool,
    segments: str,
    word_split: str,
    sentence_split: str = LEGACY_SENTENCE_SPLIT,
) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNKNOWN_TOKEN))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    batches: Iterable[str | list[str]] = _line_batches(text_chunks)
    if word_split == "whitespace":
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # Words come pre-split by str.split(), as pytorch/examples splits them: it also splits
        # at \x1c-\x1f, which WhitespaceSplit does not (the trainer sees each word alone).
        batches = (piece.split() for piece in batches)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="isolated"),
            ]
        )
    specials = LINE_SPECIALS if segments == "lines" else WORD_SPECIALS
    # The trainer keeps the most frequent words, breaks ties by the word itself (deterministic)
    # and counts the special tokens inside vocab_size; they get the first ids.
    trainer = trainers.WordLevelTrainer(
        vocab_size=max(vocab_size, len(specials)) if vocab_size else _NO_CAP,
        special_tokens=list(specials),
        show_progress=False,
    )
    tokenizer.train_from_iterator(batches, trainer=trainer)
    if segments == "lines":
        # Every line encoded alone, an empty one too, comes back followed by LINE_END.
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {LINE_END}", special_tokens=[(LINE_END, tokenizer.token_to_id(LINE_END))]
        )
        return tokenizer
    start, end = (tokenizer.token_to_id(t) for t in (SENTENCE_START, SENTENCE_END))
    specials: list = [(SENTENCE_START, start), (SENTENCE_END, end)]
    if sentence_split != LEGACY_SENTENCE_SPLIT:  # recorded (the legacy rule is recorded by none)
        mark = _SENTENCE_SPLIT_MARK + sentence_split
        specials.append({"id": mark, "ids": [end], "tokens": [SENTENCE_END]})
    # Every sentence encoded alone comes back wrapped in SENTENCE_START ... SENTENCE_END.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SENTENCE_START} $A {SENTENCE_END}", special_tokens=specials
    )
    return tokenizer


def _build_bpe(text_chunks: Iterable[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    # No prefix space and no normalizer: decoding gives back the exact bytes that went in.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_line_batches(text_chunks), trainer=trainer)
    return tokenizer


def iter_chunks(
    text: str, size: int = 1 << 22, start: int = 0, end: int | None = None
) -> Iterator[str]:
    """Pieces of about `size` characters of text[start:end], each ending at a line break (or
    the range's end). Only one piece is copied at a time, so a large text is never duplicated."""
    end = len(text) if end is None else end
    while start < end:
        cut = text.find("\n", start + size, end)
        cut = end if cut < 0 else cut + 1
        yield text[start:cut]
        start = cut


def _line_batches(text_chunks: Iterable[str]) -> Iterator[str]:
    """Pieces of about 64K characters, cut at line ends, so that training runs in parallel."""
    for chunk in text_chunks:
        yield from iter_chunks(chunk, 1 << 16)


def tokenizer_level(tokenizer: Tokenizer) -> str:
    """Tell which level built this tokenizer: "bpe", "word" or "char"."""
    if isinstance(tokenizer.model, models.BPE):
        return "bpe"
    # A char vocabulary holds single characters and <unk>, never UNKNOWN_TOKEN.
    if tokenizer.token_to_id(UNKNOWN_TOKEN) is not None:
        return "word"
    return "char"


def _word_end_token(tokenizer: Tokenizer) -> str:
    """SENTENCE_END, or LINE_END for a tokenizer built with segments="lines" (no start token)."""
    return SENTENCE_END if tokenizer.token_to_id(SENTENCE_START) is not None else LINE_END


def sentence_splitter(tokenizer: Tokenizer) -> str | None:
    """The sentence splitter a word tokenizer with segments="sentences" encodes with: the one
    it records, else LEGACY_SENTENCE_SPLIT (a tokenizer from before the setting, whose runs and
    prepared data keep encoding as they were made); None for one that splits no sentences."""
    if tokenizer_level(tokenizer) != "word" or tokenizer.token_to_id(SENTENCE_START) is None:
        return None
    processor = tokenizer.post_processor
    state = json.loads(processor.__getstate__()) if processor is not None else {}
    for name in state.get("special_tokens", {}):
        if name.startswith(_SENTENCE_SPLIT_MARK):
            recorded = name[len(_SENTENCE_SPLIT_MARK) :]
            if recorded not in SENTENCE_SPLITS:
                raise DataError(
                    f"the tokenizer splits sentences with {recorded!r}, which this charlm "
                    f"does not know (it knows {', '.join(SENTENCE_SPLITS)}); upgrade charlm"
                )
            return recorded
    return LEGACY_SENTENCE_SPLIT


def _splits_at_whitespace(tokenizer: Tokenizer) -> bool:
    """Whether the words were split by whitespace only (word_split="whitespace")."""
    return isinstance(tokenizer.pre_tokenizer, pre_tokenizers.WhitespaceSplit)


def special_ids(tokenizer: Tokenizer) -> dict[str, int | None]:
    """Ids of the unknown, start and end tokens; None where the level (or segments) has none.

    word: "end" is SENTENCE_END, or LINE_END with segments="lines", where "start" is None.
    """
    level = tokenizer_level(tokenizer)
    if level == "word":
        return {
            "unk": tokenizer.token_to_id(UNKNOWN_TOKEN),
            "start": tokenizer.token_to_id(SENTENCE_START),
            "end": tokenizer.token_to_id(_word_end_token(tokenizer)),
        }
    if level == "char":
        return {"unk": tokenizer.token_to_id(CHAR_UNK), "start": None, "end": None}
    # Byte-level BPE can spell every byte, so it has no unknown token.
    return {"unk": None, "start": None, "end": None}


def transformers_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """What `transformers.PreTrainedTokenizerFast(tokenizer_file=..., **these)` needs to know the
    unknown, start, end and pad tokens: it reads none of them from tokenizer.json (README,
    "Using tokenizer.json elsewhere"). charlm pads nothing the model reads (padded targets are
    skipped), so any id serves as pad where the attention mask hides it: the end token, else
    <unk> (char), else the token with id 0 (bpe, which has neither)."""
    level = tokenizer_level(tokenizer)
    if level == "word":
        end = _word_end_token(tokenizer)
        tokens = {"unk_token": UNKNOWN_TOKEN, "eos_token": end, "pad_token": end}
        if tokenizer.token_to_id(SENTENCE_START) is not None:
            tokens["bos_token"] = SENTENCE_START
        return tokens
    if level == "char":
        return {"unk_token": CHAR_UNK, "pad_token": CHAR_UNK}
    return {"pad_token": str(tokenizer.id_to_token(0))}


# Written beside every tokenizer.json charlm writes (prepared data, checkpoints), so that
# `transformers.AutoTokenizer.from_pretrained(FOLDER)` gets the special tokens too.
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_SPECIAL_TOKENS = "special_tokens_map.json"
_HF_ROLES = ("unk_token", "pad_token", "bos_token", "eos_token")


def transformers_files(tokenizer: Tokenizer) -> dict[str, str]:
    """tokenizer_config.json and special_tokens_map.json for `tokenizer` (file name -> text):
    the class PreTrainedTokenizerFast and the `transformers_tokens` the level has; a role the
    level lacks (char: start and end; bpe: unknown, start and end) is null in the config and
    absent from the map, as transformers writes them."""
    tokens = transformers_tokens(tokenizer)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{role: tokens.get(role) for role in _HF_ROLES},
        "clean_up_tokenization_spaces": False,  # decode as tokenizer.json's decoder does
    }
    present = {role: tokens[role] for role in _HF_ROLES if role in tokens}
    return {
        HF_TOKENIZER_CONFIG: json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        HF_SPECIAL_TOKENS: json.dumps(present, indent=2, ensure_ascii=False) + "\n",
    }


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    """Write `tokenizer.json` (readable by `Tokenizer.from_file`)."""
    tokenizer.save(str(path))


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a tokenizer.json, or raise a DataError saying how to recreate it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: tokenizer file not found; run `charlm prepare` to create it")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for bad JSON
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"{path}: not a valid tokenizer file ({reason}); run `charlm prepare` again"
        ) from None


def _id_to_token_table(tokenizer: Tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    table = [""] * (max(vocab.values()) + 1 if vocab else 0)
    for token, token_id in vocab.items():
        table[token_id] = token
    return table


class Encoder:
    """Turn text into token ids quickly; unseen characters or words become the unknown id.

    word: every sentence is wrapped in SENTENCE_START ... SENTENCE_END, or with segments="lines"
    every line (empty ones too) is followed by LINE_END.
    """

    def __init__(self, tokenizer: Tokenizer, level: str) -> None:
        self.tokenizer = tokenizer
        self.level = check_level(level)
        if level == "char":
            self._char_table = self._make_char_table(tokenizer)
        if level == "word":
            self._by_lines = tokenizer.token_to_id(SENTENCE_START) is None
            self._by_whitespace = _splits_at_whitespace(tokenizer)
            self._sentence_split = sentence_splitter(tokenizer) or LEGACY_SENTENCE_SPLIT

    @staticmethod
    def _make_char_table(tokenizer: Tokenizer) -> np.ndarray:
        """Dense code point -> id table; its last slot (past the largest code point) is unk."""
        unk = tokenizer.token_to_id(CHAR_UNK)
        pairs = [(ord(t), i) for t, i in tokenizer.get_vocab().items() if len(t) == 1]
        size = max((cp for cp, _ in pairs), default=0) + 2
        table = np.full(size, unk, dtype=np.int64)
        for code_point, token_id in pairs:
            table[code_point] = token_id
        return table

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text` as int64 (never raises on unseen input)."""
        if not text:
            return np.zeros(0, dtype=np.int64)
        if self.level == "char":
            # The tokenizers encoder runs at 1-4M chars/s here; a table lookup at ~19M.
            table = self._char_table
            return table[np.minimum(_code_points(text), len(table) - 1)]
        if self.level == "word":
            if self._by_lines:
                pieces = split_lines(text)
            else:
                pieces = split_sentences(text, self._sentence_split)
            if self._by_whitespace:
                # str.split(), exactly as the tokenizer was trained (see _build_word).
                words = [piece.split() for piece in pieces]
                encodings = self.tokenizer.encode_batch(words, is_pretokenized=True)
                return np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64)
        else:
            pieces = text.splitlines(keepends=True)
        encodings = self.tokenizer.encode_batch(pieces)
        return np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64)


# Word-level detokenizing: how a token attaches to its neighbours.
_NO_SPACE_BEFORE = frozenset(",.!?;:)]}%'’”…")
_NO_SPACE_AFTER = frozenset("([{$#“‘")
_JOINERS = frozenset("-/")


class StreamDecoder:
    """Turn generated ids into printable text one token at a time.

    char: the character; word: the word with readable spacing (one space between words where
    they were split at whitespace only, so pre-tokenised text comes back as written), with
    SENTENCE_START dropped, SENTENCE_END or LINE_END as a newline and UNKNOWN_TOKEN shown;
    bpe: text once its UTF-8 bytes are complete, so a character split over several tokens is
    never printed broken ('' until then).
    """

    def __init__(self, tokenizer: Tokenizer, level: str) -> None:
        self.tokenizer = tokenizer
        self.level = check_level(level)
        if level == "bpe":
            self._stream = decoders.DecodeStream(skip_special_tokens=False)
            self._held: list[int] = []  # ids whose bytes DecodeStream has not printed yet
        else:
            self._tokens = _id_to_token_table(tokenizer)
        if level == "word":
            self._end_token = _word_end_token(tokenizer)
            self._plain_spacing = _splits_at_whitespace(tokenizer)
        self._previous: str | None = None  # word: last token on this line; None at line start
        self._quote_open = False

    def _token(self, token_id: int) -> str:
        if not 0 <= token_id < len(self._tokens):
            size = len(self._tokens)
            raise DataError(f"token id {token_id} is outside the vocabulary (size {size})")
        return self._tokens[token_id]

    def step(self, token_id: int) -> str:
        """Text to print for this token ('' is allowed)."""
        token_id = int(token_id)
        if self.level == "bpe":
            text = self._stream.step(self.tokenizer, token_id) or ""
            self._held = [] if text else [*self._held, token_id]
            return text
        token = self._token(token_id)
        if self.level == "char":
            return token
        return self._word_step(token)

    def finish(self) -> str:
        """What is still held back when generation stops: bpe bytes of an unfinished character,
        shown with U+FFFD where they do not form one, rather than silently dropped."""
        if self.level != "bpe" or not self._held:
            return ""
        held, self._held = self._held, []
        return self.tokenizer.decode(held, skip_special_tokens=False)

    def _word_step(self, token: str) -> str:
        if token == SENTENCE_START:
            return ""
        if token == self._end_token:
            self._previous, self._quote_open = None, False
            return "\n"
        previous, self._previous = self._previous, token
        if self._plain_spacing:
            return token if previous is None else " " + token
        if token == '"':
            opening = not self._quote_open
            self._quote_open = opening
            # An opening quote takes a space before it, a closing one does not.
            return ('"' if previous is None else ' "') if opening else '"'
        if previous is None:
            return token
        attaches = (
            token in _NO_SPACE_BEFORE
            or token in _JOINERS
            or previous in _JOINERS
            or previous in _NO_SPACE_AFTER
            or (previous == '"' and self._quote_open)
            or (token[0] in "'’" and token[1:].isalpha())  # clitics: don 't -> don't
        )
        return token if attaches else " " + token


def decode(tokenizer: Tokenizer, level: str, ids: Sequence[int]) -> str:
    """Readable text for a sequence of ids (the same text StreamDecoder prints)."""
    check_level(level)
    if level == "bpe":
        return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)
    stream = StreamDecoder(tokenizer, level)
    return "".join(stream.step(i) for i in ids)


def count_chars(text: str) -> int:
    """Characters counted for bits per character: code points, i.e. len() of the str."""
    return len(text)
