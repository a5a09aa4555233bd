"""Tests for charlm.data.tokenizer: round trips, unknowns, the word vocabulary cap, readable decoding."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from charlm.data.tokenizer import (
    CHAR_UNK,
    LINE_END,
    SENTENCE_END,
    SENTENCE_START,
    UNKNOWN_TOKEN,
    Encoder,
    StreamDecoder,
    build_tokenizer,
    count_chars,
    decode,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    split_lines,
    split_sentences,
    tokenizer_level,
)
from charlm.errors import DataError, UsageError

UNICODE_SAMPLE = (
    "Hello, world!\tTabs\tand\nnewlines\r\n"
    "日本語のテキスト。中文字符。\n"
    "Привет, мир! Съешь же ещё этих мягких булок.\n"
    "Emoji: 😀🎉👍🏽 family 👨‍👩‍👧\n"
    "Combining: e\u0301 a\u0308 n\u0303 (decomposed) vs é ä ñ\n"
    "Math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and ∑ ∫ √\n"
)


def test_char_round_trip_on_unicode() -> None:
    tokenizer = build_tokenizer("char", [UNICODE_SAMPLE], vocab_size=0)
    ids = Encoder(tokenizer, "char").encode(UNICODE_SAMPLE)
    assert ids.dtype == np.int64
    assert len(ids) == count_chars(UNICODE_SAMPLE)
    assert decode(tokenizer, "char", ids) == UNICODE_SAMPLE
    # The fast numpy path gives the same ids as the tokenizer itself.
    assert ids.tolist() == tokenizer.encode(UNICODE_SAMPLE).ids


def test_char_vocabulary_is_sorted_code_points_plus_unk() -> None:
    tokenizer = build_tokenizer("char", ["cab", "\nb😀"], vocab_size=12345)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert [token for token, _ in vocab] == [CHAR_UNK, "\n", "a", "b", "c", "😀"]
    assert special_ids(tokenizer) == {"unk": 0, "start": None, "end": None}
    assert tokenizer_level(tokenizer) == "char"


def test_char_unseen_characters_become_unk() -> None:
    tokenizer = build_tokenizer("char", ["abc"], vocab_size=0)
    ids = Encoder(tokenizer, "char").encode("aXb😀\U0010ffff")
    unk = special_ids(tokenizer)["unk"]
    assert ids.tolist() == [1, unk, 2, unk, unk]
    assert decode(tokenizer, "char", ids) == f"a{CHAR_UNK}b{CHAR_UNK}{CHAR_UNK}"


def test_char_encode_empty_text() -> None:
    tokenizer = build_tokenizer("char", ["abc"], vocab_size=0)
    assert Encoder(tokenizer, "char").encode("").shape == (0,)


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_char_round_trip_property(text: str) -> None:
    tokenizer = build_tokenizer("char", [text], vocab_size=0)
    ids = Encoder(tokenizer, "char").encode(text)
    assert decode(tokenizer, "char", ids) == text
    stream = StreamDecoder(tokenizer, "char")
    assert "".join(stream.step(i) for i in ids) == text


def test_tokenizer_json_round_trip(tmp_path: Path) -> None:
    for level in ("char", "word", "bpe"):
        tokenizer = build_tokenizer(level, [UNICODE_SAMPLE * 3], vocab_size=300)
        path = tmp_path / f"{level}.json"
        tokenizer.save(str(path))
        loaded = load_tokenizer(path)
        assert isinstance(Tokenizer.from_file(str(path)), Tokenizer)
        assert loaded.get_vocab() == tokenizer.get_vocab()
        assert tokenizer_level(loaded) == level
        encoded = Encoder(loaded, level).encode(UNICODE_SAMPLE)
        assert encoded.tolist() == Encoder(tokenizer, level).encode(UNICODE_SAMPLE).tolist()


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match="not a valid tokenizer") as info:
        load_tokenizer(bad)
    assert "\n" not in str(info.value)


def test_unknown_level_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="char, word, bpe"):
        build_tokenizer("sentencepiece", ["abc"], 10)


def test_split_sentences() -> None:
    text = 'One. Two! "Three?" Four\n\nMr. Smith went.  3.5 stays.\nno end'
    assert split_sentences(text) == [
        "One.",
        "Two!",
        '"Three?"',
        "Four",
        "Mr. Smith went.",
        "3.5 stays.",
        "no end",
    ]


WORD_TEXT = "The cat sat. The cat ran! The dog sat?\nThe cat saw the dog.\nA zebra appeared once.\n"


def test_word_vocabulary_cap_counts_specials_and_keeps_most_frequent() -> None:
    tokenizer = build_tokenizer("word", [WORD_TEXT], vocab_size=6)
    vocab = tokenizer.get_vocab()
    assert len(vocab) == 6
    assert {SENTENCE_START, SENTENCE_END, UNKNOWN_TOKEN} <= set(vocab)
    # Counts: the 5, "." 3, cat 3, dog 2, sat 2, ... (ties would go to the smaller string).
    assert set(vocab) - {SENTENCE_START, SENTENCE_END, UNKNOWN_TOKEN} == {"the", ".", "cat"}
    assert special_ids(tokenizer) == {
        "unk": vocab[UNKNOWN_TOKEN],
        "start": vocab[SENTENCE_START],
        "end": vocab[SENTENCE_END],
    }
    # The same text gives the same ids every time.
    again = build_tokenizer("word", [WORD_TEXT], vocab_size=6)
    assert again.get_vocab() == vocab


def test_word_encoding_wraps_sentences_and_maps_rare_words_to_unknown() -> None:
    tokenizer = build_tokenizer("word", [WORD_TEXT], vocab_size=6)
    ids = Encoder(tokenizer, "word").encode("The cat sat. The zebra!\nCat")
    tokens = [tokenizer.id_to_token(i) for i in ids]
    s, e, u = SENTENCE_START, SENTENCE_END, UNKNOWN_TOKEN
    assert tokens == [s, "the", "cat", u, ".", e, s, "the", u, u, e, s, "cat", e]


def test_word_decode_is_readable() -> None:
    text = 'Hello, world! It\'s a test (really). "Quoted words," she said; well-known: yes?\n'
    tokenizer = build_tokenizer("word", [text], vocab_size=1000)
    ids = Encoder(tokenizer, "word").encode(text)
    assert decode(tokenizer, "word", ids) == (
        'hello, world!\nit\'s a test (really).\n"quoted words," she said; well-known: yes?\n'
    )
    stream = StreamDecoder(tokenizer, "word")
    assert "".join(stream.step(i) for i in ids) == decode(tokenizer, "word", ids)


def test_word_decode_shows_unknown_token() -> None:
    tokenizer = build_tokenizer("word", [WORD_TEXT], vocab_size=6)
    ids = Encoder(tokenizer, "word").encode("the zebra sat.")
    assert decode(tokenizer, "word", ids) == f"the {UNKNOWN_TOKEN} {UNKNOWN_TOKEN}.\n"


BPE_CORPUS = UNICODE_SAMPLE * 5 + "The quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture(scope="module")
def bpe_tokenizer() -> Tokenizer:
    return build_tokenizer("bpe", [BPE_CORPUS], vocab_size=400)


def test_bpe_vocabulary_and_specials(bpe_tokenizer: Tokenizer) -> None:
    assert 256 < bpe_tokenizer.get_vocab_size() <= 400
    assert special_ids(bpe_tokenizer) == {"unk": None, "start": None, "end": None}
    assert tokenizer_level(bpe_tokenizer) == "bpe"


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_text(bpe_tokenizer: Tokenizer, text: str) -> None:
    ids = Encoder(bpe_tokenizer, "bpe").encode(text)
    assert decode(bpe_tokenizer, "bpe", ids) == text
    stream = StreamDecoder(bpe_tokenizer, "bpe")
    pieces = [stream.step(i) for i in ids]
    assert "".join(pieces) == text
    # Never a half character: a streamed piece is never a replacement character.
    assert all("\ufffd" not in piece for piece in pieces) or "\ufffd" in text


def test_bpe_stream_holds_back_partial_characters(bpe_tokenizer: Tokenizer) -> None:
    text = "ꙮ𝄞"  # unseen in training: each is spelt with several byte tokens
    ids = Encoder(bpe_tokenizer, "bpe").encode(text)
    assert len(ids) > 2
    stream = StreamDecoder(bpe_tokenizer, "bpe")
    pieces = [stream.step(i) for i in ids]
    assert [p for p in pieces if p] == ["ꙮ", "𝄞"]


def test_word_vocabulary_ties_are_broken_by_the_word() -> None:
    tokenizer = build_tokenizer("word", ["d b c a\nc a b d\n"], vocab_size=5)
    assert set(tokenizer.get_vocab()) == {SENTENCE_START, SENTENCE_END, UNKNOWN_TOKEN, "a", "b"}


# --- pytorch/examples' word level: case kept, whitespace split, every line ends in LINE_END ---

# WikiText's shape: a leading space, empty lines, "@-@", "<unk>", punctuation already split off.
WIKI_TEXT = (
    " = Valkyria Chronicles III = \n"
    " \n"
    " The game 's <unk> , the well @-@ known 3 @.@ 5 score . \n"
    "\n"
    " the Game ( 2011 ) : it sold well ! \n"
)


def pytorch_tokens(text: str) -> list[str]:
    """pytorch/examples word_language_model data.py: `line.split() + ['<eos>']` for every line."""
    return [word for line in io.StringIO(text) for word in line.split() + [LINE_END]]


def build_lines(text: str, vocab_size: int = 0, lowercase: bool = False) -> Tokenizer:
    return build_tokenizer(
        "word",
        [text],
        vocab_size,
        lowercase=lowercase,
        segments="lines",
        word_split="whitespace",
    )


def test_split_lines_reads_like_a_file() -> None:
    for text in ("a\n\nb\n", "a\n\nb", "\n", "\n\n x \n", "x"):
        assert split_lines(text) == [line.rstrip("\n") for line in io.StringIO(text)]


def test_lines_mode_ends_every_line_empty_ones_too() -> None:
    tokenizer = build_lines(WIKI_TEXT)
    ids = Encoder(tokenizer, "word").encode(WIKI_TEXT)
    assert len(ids) == sum(len(line.split()) + 1 for line in io.StringIO(WIKI_TEXT))
    assert [tokenizer.id_to_token(i) for i in ids] == pytorch_tokens(WIKI_TEXT)
    # No start token anywhere: special_ids says so, and the end is LINE_END.
    assert SENTENCE_START not in tokenizer.get_vocab()
    assert special_ids(tokenizer) == {
        "unk": tokenizer.token_to_id(UNKNOWN_TOKEN),
        "start": None,
        "end": tokenizer.token_to_id(LINE_END),
    }
    assert tokenizer_level(tokenizer) == "word"


def test_lines_mode_keeps_case_and_pretokenised_words() -> None:
    tokenizer = build_lines(WIKI_TEXT)
    vocab = tokenizer.get_vocab()
    # vocab_size=0: every word of the text, plus LINE_END and UNKNOWN_TOKEN.
    assert set(vocab) == set(WIKI_TEXT.split()) | {LINE_END, UNKNOWN_TOKEN}
    assert {"The", "the", "Game", "game", "@-@", "@.@", "'s", "<unk>", ",", "(", "!"} <= set(vocab)
    assert vocab["The"] != vocab["the"]
    # The same text with the rules and lower-casing: @-@ is split up, The and the are one word.
    rules = build_tokenizer("word", [WIKI_TEXT], 0, segments="lines")
    assert "@-@" not in rules.get_vocab() and "The" not in rules.get_vocab()
    assert "<unk>" in rules.get_vocab()


def test_lines_mode_lowercase_is_optional() -> None:
    tokenizer = build_lines(WIKI_TEXT, lowercase=True)
    ids = Encoder(tokenizer, "word").encode("The THE the\n")
    assert [tokenizer.id_to_token(i) for i in ids] == ["the", "the", "the", LINE_END]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "B", "b", "@-@", ",", " ", "\t", "\n", "\x1c", "\xa0"])))
def test_lines_mode_matches_pytorch_examples_on_any_text(pieces: list[str]) -> None:
    # \x1c and \xa0: str.split() splits at both, the tokenizers library only at \xa0.
    text = "".join(pieces)
    if not text.split():
        return  # nothing to build a vocabulary from
    tokenizer = build_lines(text)
    ids = Encoder(tokenizer, "word").encode(text)
    assert [tokenizer.id_to_token(i) for i in ids] == pytorch_tokens(text)


def test_lines_mode_vocabulary_cap_counts_its_two_specials() -> None:
    tokenizer = build_lines("b a\nc a b\na\n", vocab_size=4)
    assert set(tokenizer.get_vocab()) == {LINE_END, UNKNOWN_TOKEN, "a", "b"}
    ids = Encoder(tokenizer, "word").encode("a c\n")
    assert [tokenizer.id_to_token(i) for i in ids] == ["a", UNKNOWN_TOKEN, LINE_END]


def test_lines_mode_decodes_to_the_pretokenised_text_and_survives_saving(tmp_path: Path) -> None:
    tokenizer = build_lines(WIKI_TEXT)
    save_tokenizer(tokenizer, tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    ids = Encoder(loaded, "word").encode(WIKI_TEXT)
    assert ids.tolist() == Encoder(tokenizer, "word").encode(WIKI_TEXT).tolist()
    expected = "".join(" ".join(line.split()) + "\n" for line in io.StringIO(WIKI_TEXT))
    assert decode(loaded, "word", ids) == expected
    stream = StreamDecoder(loaded, "word")
    assert "".join(stream.step(i) for i in ids) == expected


def test_whitespace_split_with_sentences_keeps_words_whole() -> None:
    text = "Well-known don't 3.5 . Next one !\n"
    tokenizer = build_tokenizer("word", [text], 0, word_split="whitespace")
    ids = Encoder(tokenizer, "word").encode(text)
    s, e = SENTENCE_START, SENTENCE_END
    tokens = [tokenizer.id_to_token(i) for i in ids]
    assert tokens == [s, "well-known", "don't", "3.5", ".", e, s, "next", "one", "!", e]


def test_word_vocab_size_zero_keeps_every_word() -> None:
    tokenizer = build_tokenizer("word", [WORD_TEXT], vocab_size=0)
    capped = build_tokenizer("word", [WORD_TEXT], vocab_size=10_000)
    assert tokenizer.get_vocab() == capped.get_vocab()
    with pytest.raises(UsageError, match="vocab_size"):
        build_tokenizer("word", [WORD_TEXT], vocab_size=-1)
    with pytest.raises(UsageError, match="segments"):
        build_tokenizer("word", [WORD_TEXT], 10, segments="paragraphs")
    with pytest.raises(UsageError, match="word_split"):
        build_tokenizer("word", [WORD_TEXT], 10, word_split="bpe")


def test_bpe_stream_decoder_flushes_an_unfinished_character() -> None:
    from charlm.data.tokenizer import StreamDecoder, build_tokenizer

    tokenizer = build_tokenizer("bpe", ["plain ascii text only, nothing else " * 50], 300)
    ids = tokenizer.encode("ab 🙂").ids
    assert len(ids) >= 4  # the emoji's four bytes are separate tokens in this vocabulary
    whole = StreamDecoder(tokenizer, "bpe")
    assert "".join(whole.step(i) for i in ids) + whole.finish() == "ab 🙂"
    cut = StreamDecoder(tokenizer, "bpe")
    printed = "".join(cut.step(i) for i in ids[:-1])  # generation stopped mid-character
    tail = cut.finish()
    assert printed == "ab " and tail and set(tail) == {"\ufffd"}  # shown, marked unfinished
    assert cut.finish() == ""  # nothing is held twice
