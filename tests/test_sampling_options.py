"""Sampling options: stop strings, the repetition penalty, int8 sampling and scoring, and that
none of them changes a seeded sample when unused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY, cli, write_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

import charlm
from charlm.errors import ArgumentError, ArgumentTypeError, UsageError
from charlm.inference.sample import (
    PRIME_CHUNK,
    SampleOptions,
    Sampler,
    StopMatcher,
    filter_logits,
    penalise,
    unescape,
)
from charlm.model.cells import CELLS, Affine
from charlm.model.network import LeanStepper, SteppedModel
from charlm.model.quantize import Int8Affine, check_quantize_device

STEPS = ("--set", "train.max_steps=60", "--set", "optim.lr=0.01")


def _train(folder: Path, text: str | None, *settings: str) -> Path:
    corpus = write_corpus(folder, text)
    result = cli("train", corpus, "--out", folder / "run", "-q", *TINY, *STEPS, *settings)
    assert result.exit_code == 0, result.stderr
    return folder / "run"


@pytest.fixture(scope="module")
def char_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("char"), None)


@pytest.fixture(scope="module")
def word_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_english

    sets = ["data.level=word", "data.vocab_size=30", "data.batching=sentence"]
    return _train(tmp_path_factory.mktemp("word"), make_english(400), *_sets(sets))


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_english

    sets = ["data.level=bpe", "data.vocab_size=300"]
    return _train(tmp_path_factory.mktemp("bpe"), make_english(400), *_sets(sets))


def _sets(items: list[str]) -> list[str]:
    return [part for item in items for part in ("--set", item)]


def previous_pieces(sampler: Sampler, options: SampleOptions) -> list[str]:
    """The sampling loop as it was before stop strings, the repetition penalty and the blocks
    (kept here verbatim in substance, so that the new loop is checked against it in the same
    process): the fused kernel over the prime, then per token the stepper, the bans by index,
    the temperature division, the filters and one multinomial draw."""
    sentence_mode = options.sentences
    if sentence_mode is None:
        sentence_mode = sampler.config.data.batching == "sentence"
    step, model, device = LeanStepper(sampler.model), sampler.model, sampler.device
    generator = torch.Generator(device=device).manual_seed(options.seed)
    n, prime = options.num_samples, sampler._prime_ids(options.prime)
    decoders = [sampler_decoder(sampler) for _ in range(n)]
    texts = ["" for _ in range(n)]
    if options.prime:
        for i in range(n):
            texts[i] += "".join(decoders[i].step(token) for token in prime)
    with torch.inference_mode():
        tokens = torch.tensor(prime, device=device).unsqueeze(1).expand(-1, n)
        state = model.initial_state(n, device)
        for start in range(0, tokens.shape[0] - 1, PRIME_CHUNK):
            _, state = model(tokens[start : min(start + PRIME_CHUNK, len(prime) - 1)], state)
        current = tokens[-1]
        banned = [sampler.special.get("unk")]
        if sentence_mode:
            banned.append(sampler.special.get("start"))
        banned_ids = [b for b in banned if b is not None]
        end_id = sampler.special.get("end")
        done = torch.zeros(n, dtype=torch.bool, device=device)
        for position in range(options.length + (1 if sentence_mode else 0)):
            logits, state = step(current, state)
            if banned_ids:
                logits[:, banned_ids] = float("-inf")
            if sentence_mode and position < options.min_words and end_id is not None:
                logits[:, end_id] = float("-inf")
            if sentence_mode and position == options.length and end_id is not None:
                logits[:] = float("-inf")
                logits[:, end_id] = 0.0
            if options.temperature == 0:
                current = logits.argmax(dim=-1)
            else:
                filtered = filter_logits(
                    logits.float() / options.temperature, options.top_k, options.top_p
                )
                probs = torch.softmax(filtered, dim=-1)
                current = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            finished = done.tolist()
            for i, token in enumerate(current.tolist()):
                texts[i] += "" if finished[i] else decoders[i].step(token)
            if sentence_mode and end_id is not None:
                done |= current == end_id
                if bool(done.all()):
                    break
    return [text + decoder.finish() for text, decoder in zip(texts, decoders, strict=True)]


def sampler_decoder(sampler: Sampler):  # noqa: ANN201
    from charlm.data.tokenizer import StreamDecoder

    return StreamDecoder(sampler.tokenizer, sampler.level)


def _texts(sampler: Sampler, **options: object) -> list[str]:
    return sampler.generate(SampleOptions(**options), lambda i, p: None)  # type: ignore[arg-type]


CHAR_CASES = [
    dict(length=150, seed=1),
    dict(prime="abc ", length=120, seed=2, temperature=0.7, top_k=5),
    dict(length=100, seed=3, num_samples=3, top_p=0.9),
    dict(prime="xyz\n" * 200, length=60, seed=4, temperature=0),  # a prime past PRIME_CHUNK
]


@pytest.mark.parametrize("case", CHAR_CASES)
def test_unused_options_give_the_previous_loop_s_text_byte_for_byte(
    char_run: Path, case: dict
) -> None:
    sampler = Sampler(char_run, device="cpu")
    before = previous_pieces(sampler, SampleOptions(**case))  # type: ignore[arg-type]
    assert _texts(sampler, **case) == before
    assert _texts(sampler, **case, stop=None, repetition_penalty=1.0) == before
    assert _texts(sampler, **case, stop=[]) == before


def test_unused_options_leave_word_and_bpe_samples_unchanged(word_run: Path, bpe_run: Path) -> None:
    word, bpe = Sampler(word_run, device="cpu"), Sampler(bpe_run, device="cpu")
    for sampler, case in (
        (word, dict(num_samples=6, seed=1, min_words=3, length=12)),  # sentence mode
        (word, dict(prime="the cat", length=20, seed=2, sentences=False)),
        (bpe, dict(prime="The ", length=80, seed=3, num_samples=2)),
    ):
        before = previous_pieces(sampler, SampleOptions(**case))  # type: ignore[arg-type]
        assert _texts(sampler, **case) == before
        assert _texts(sampler, **case, repetition_penalty=1.0, stop=()) == before


def test_the_command_line_prints_the_same_text_with_the_options_at_their_defaults(
    char_run: Path,
) -> None:
    plain = cli("sample", char_run, "--seed", "7", "--length", "90", "--device", "cpu")
    explicit = cli(
        "sample", char_run, "--seed", "7", "--length", "90", "--device", "cpu",
        "--repetition-penalty", "1", "--quantize", "fp32",
    )  # fmt: skip
    sampler = Sampler(char_run, device="cpu")
    before = previous_pieces(sampler, SampleOptions(length=90, seed=7))[0]
    assert plain.exit_code == explicit.exit_code == 0
    assert plain.stdout == explicit.stdout == before + ("" if before.endswith("\n") else "\n")


def _first_stop(text: str, stops: list[str]) -> int:
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return min(ends) if ends else len(text)


def test_a_stop_string_ends_the_text_there_included(char_run: Path) -> None:
    lm = charlm.load(char_run, device="cpu")
    full = lm.generate("abc ", length=200, seed=5)
    generated = full[4:]
    stop = generated[40:43]  # three characters the sample does produce
    cut = lm.generate("abc ", length=200, seed=5, stop=stop)
    assert cut == "abc " + generated[: _first_stop(generated, [stop])]
    assert cut.endswith(stop) and len(cut) < len(full)
    streamed = list(lm.stream("abc ", length=200, seed=5, stop=stop))
    assert "".join(streamed) == cut  # the stream never goes past it either


def test_the_earliest_of_several_stops_wins_and_the_prime_is_not_searched(
    char_run: Path,
) -> None:
    lm = charlm.load(char_run, device="cpu")
    full = lm.generate("xyz\n", length=200, seed=6)
    generated = full[4:]
    stops = [generated[60:63], generated[20:22], "never in it"]
    cut = lm.generate("xyz\n", length=200, seed=6, stop=stops)
    assert cut == "xyz\n" + generated[: _first_stop(generated, stops)]
    assert lm.generate("xyz\n", length=50, seed=6, stop="xyz") == (
        "xyz\n" + generated[: _first_stop(generated[:50], ["xyz"])]
    )


def test_stops_spanning_tokens_cut_word_and_bpe_text_inside_a_piece(
    word_run: Path, bpe_run: Path
) -> None:
    for run, prime, sentences in ((word_run, "the", False), (bpe_run, "The ", None)):
        lm = charlm.load(run, device="cpu")
        pieces = list(lm.stream(prime, length=60, seed=8, sentences=sentences))
        assert "".join(pieces).startswith(prime)
        generated = "".join(pieces)[len(prime) :]
        # A piece boundary well inside the generated text, with two characters either side.
        bound = next(
            len("".join(pieces[: k + 1])) - len(prime)
            for k in range(len(pieces) // 2, len(pieces))
            if len(pieces[k]) >= 2 and k + 1 < len(pieces) and len(pieces[k + 1]) >= 2
        )
        stop = generated[bound - 2 : bound + 1]  # ends one character into the next piece
        cut = "".join(lm.stream(prime, length=60, seed=8, sentences=sentences, stop=stop))
        assert cut == prime + generated[: _first_stop(generated, [stop])], (run, stop)
        assert cut.endswith(stop)


def test_each_sample_stops_on_its_own(char_run: Path) -> None:
    sampler = Sampler(char_run, device="cpu")
    full = _texts(sampler, length=150, seed=9, num_samples=3)
    stop = "abd"
    cut = _texts(sampler, length=150, seed=9, num_samples=3, stop=stop)
    assert cut == [text[: _first_stop(text, [stop])] for text in full]


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="ab\n", max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=8),
    stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_stop_matcher_returns_the_text_up_to_the_first_stop(
    text: str, cuts: list[int], stops: list[str]
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    matcher, out = StopMatcher(tuple(stops)), ""
    for start, end in zip(bounds, bounds[1:], strict=False):
        out += matcher.feed(text[start:end])
    assert out == text[: _first_stop(text, stops)]
    assert matcher.stopped == any(s in text for s in stops)


def test_the_command_line_reads_escapes_in_stop(char_run: Path) -> None:
    lm = charlm.load(char_run, device="cpu")
    expected = lm.generate(length=120, seed=2, stop="\n")
    result = cli("sample", char_run, "--seed", "2", "--length", "120", "--stop", "\\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected and expected.endswith("\n")
    assert unescape(r"a\tb\\n\x41\u00e9\r", "--stop") == "a\tb\\nA\u00e9\r"
    with pytest.raises(UsageError, match=r"--stop .*unknown escape \\q"):
        unescape(r"a\q", "--stop")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--stop", ""], "--stop must not be empty"),
        (["--stop", "a\\q"], "--stop"),
        (["--repetition-penalty", "0"], "--repetition-penalty"),
        (["--repetition-penalty", "-1.2"], "--repetition-penalty"),
        (["--repetition-penalty", "nan"], "--repetition-penalty"),
    ],
)
def test_bad_values_are_one_line_usage_errors(char_run: Path, args: list, named: str) -> None:
    result = cli("sample", char_run, *args)
    assert result.exit_code == 2 and named in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_an_unknown_quantize_is_refused_by_the_command_line_as_a_choice(char_run: Path) -> None:
    """--quantize is a choice: the command line's own refusal names it and lists the values."""
    result = cli("sample", char_run, "--quantize", "int4")
    assert result.exit_code == 2 and "Invalid value for '--quantize'" in result.stderr
    assert "'fp32'" in result.stderr and "'int8'" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_the_api_names_its_arguments(char_run: Path) -> None:
    lm = charlm.load(char_run, device="cpu")
    for kwargs, kind, message in (
        (dict(stop=""), ArgumentError, "stop must not be empty"),
        (dict(stop=["a", 3]), ArgumentTypeError, "takes stop as"),
        (dict(stop=5), ArgumentTypeError, "takes stop as"),
        (dict(repetition_penalty=0.0), ArgumentError, "repetition_penalty must be"),
        (dict(repetition_penalty="2"), ArgumentTypeError, "repetition_penalty as a number"),
    ):
        with pytest.raises(kind, match=message):
            lm.generate("a", length=5, **kwargs)
    with pytest.raises(ArgumentError, match="quantize must be None or 'int8'"):
        charlm.load(char_run, quantize="int4")
    with pytest.raises(ArgumentTypeError, match="load.. takes quantize"):
        charlm.load(char_run, quantize=8)


def test_penalty_is_ctrl_s_as_hugging_face_applies_it() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 11) * 3
    seen = torch.rand(3, 11) < 0.4
    out = penalise(logits, seen, 1.3)
    for row in range(3):
        for token in range(11):
            value = logits[row, token]
            if seen[row, token]:  # HF: torch.where(score < 0, score * penalty, score / penalty)
                value = value * 1.3 if value < 0 else value / 1.3
            assert out[row, token] == value


def test_the_penalty_covers_the_prime_and_every_drawn_token(char_run: Path) -> None:
    sampler = Sampler(char_run, device="cpu")
    text = _texts(sampler, prime="abc", length=40, seed=3, repetition_penalty=1.8)[0]
    generator = torch.Generator().manual_seed(3)
    step, prime = LeanStepper(sampler.model), sampler._prime_ids("abc")
    seen = torch.zeros(1, sampler.tokenizer.get_vocab_size(), dtype=torch.bool)
    seen[0, prime] = True
    unk = sampler.special["unk"]
    with torch.inference_mode():
        state = sampler.model(
            torch.tensor(prime[:-1]).unsqueeze(1), sampler.model.initial_state(1)
        )[1]
        current, out = torch.tensor(prime[-1:]), []
        for _ in range(40):
            logits, state = step(current, state)
            logits = penalise(logits, seen, 1.8)
            logits[0, unk] = float("-inf")
            probs = torch.softmax(logits, dim=-1)
            current = torch.multinomial(probs, 1, generator=generator)[:, 0]
            seen[0, current] = True
            out.append(int(current))
    assert text == "abc" + charlm.load(char_run, device="cpu").decode(out)
    assert text != _texts(sampler, prime="abc", length=40, seed=3)[0]


def test_the_stepper_s_ban_gives_minus_infinity_and_leaves_the_rest_bit_for_bit(
    char_run: Path,
) -> None:
    model = Sampler(char_run, device="cpu").model
    plain, banned = LeanStepper(model), LeanStepper(model, banned=[0, 2])
    state = model.initial_state(2)
    with torch.inference_mode():
        a, _ = plain(torch.tensor([1, 3]), state)
        b, _ = banned(torch.tensor([1, 3]), state)
    assert torch.isneginf(b[:, [0, 2]]).all()
    keep = [i for i in range(a.shape[1]) if i not in (0, 2)]
    assert torch.equal(a[:, keep], b[:, keep])


# int8


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_int8_steps_follow_the_fp32_steps_of_every_cell(cell: str) -> None:
    from test_speed_paths import _model, _random_state

    model = _model(cell)
    fp32, int8 = LeanStepper(model), LeanStepper(model, "int8")
    for layout in int8.layouts:  # every matrix of the step is an int8 product now
        assert any(isinstance(part, Int8Affine) for part in layout)
        assert not any(isinstance(part, (Affine, torch.Tensor)) and getattr(part, "ndim", 2) == 2
                       for part in layout)  # fmt: skip
    assert isinstance(int8.decoder, Int8Affine)
    tokens, a = torch.randint(0, 11, (6, 3)), _random_state(model, 3)
    b = a
    with torch.inference_mode():
        for token in tokens:
            la, a = fp32(token, a)
            lb, b = int8(token, b)
            torch.testing.assert_close(lb, la, atol=0.05, rtol=0.05)
            assert not torch.equal(la, lb)  # the products really are int8


def test_int8_samples_have_the_length_and_repeat_with_the_seed(char_run: Path) -> None:
    lm = charlm.load(char_run, device="cpu", quantize="int8")
    assert lm.quantize == "int8" and "quantize='int8'" in repr(lm)
    a = lm.generate("abc ", length=60, seed=3)
    assert len(a) == 64 and a.startswith("abc ")
    assert a == lm.generate("abc ", length=60, seed=3)
    assert a != lm.generate("abc ", length=60, seed=4)
    assert (
        charlm.load(char_run, device="cpu", quantize="int8").generate("abc ", length=60, seed=3)
        == a
    )  # a fresh load, the same text
    texts = Sampler(char_run, device="cpu", quantize="int8").generate(
        SampleOptions(length=30, seed=1, num_samples=3), lambda i, p: None
    )
    assert len(texts) == 3 and all(len(text) == 30 for text in texts)
    result = cli("sample", char_run, "--seed", "3", "--length", "60", "--prime", "abc ",
                 "--quantize", "int8", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0 and result.stdout == a + "\n"


def test_fp32_stays_the_default(char_run: Path) -> None:
    lm = charlm.load(char_run, device="cpu")
    assert lm.quantize is None and lm._sampler.scorer is lm.module
    assert isinstance(lm._sampler.step.decoder, Affine)  # the fp32 product, not an int8 one


def test_evaluate_int8_is_close_to_fp32_on_a_trained_model(char_run: Path, tmp_path: Path) -> None:
    from helpers import pattern_text

    held = tmp_path / "held.txt"
    held.write_text(pattern_text(3000, seed=11), encoding="utf-8")
    fp32 = charlm.load(char_run, device="cpu").score_file(held)
    int8 = charlm.load(char_run, device="cpu", quantize="int8").score_file(held)
    assert fp32.loss < 1.5  # the model learnt the pattern (uniform would be ln 10 = 2.3)
    assert int8.loss != fp32.loss and abs(int8.loss - fp32.loss) < 0.02
    assert int8.tokens == fp32.tokens
    printed = cli("evaluate", char_run, "--text", held, "--quantize", "int8", "--device", "cpu")
    assert printed.exit_code == 0 and f"loss {int8.loss:.4f}" in printed.stdout


def test_stepped_scoring_matches_the_fused_model(char_run: Path, tmp_path: Path) -> None:
    from helpers import pattern_text

    from charlm.inference.evaluate import score_text

    sampler = Sampler(char_run, device="cpu")
    text = pattern_text(2000, seed=12)
    scores = [
        score_text(model, sampler.tokenizer, sampler.config, text, level="char")
        for model in (sampler.model, SteppedModel(sampler.model, LeanStepper(sampler.model)))
    ]
    assert scores[0].tokens == scores[1].tokens
    assert abs(scores[0].loss - scores[1].loss) < 1e-5


def test_int8_is_refused_off_the_cpu_and_without_an_engine(
    char_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError) as cli_error:
        check_quantize_device("int8", torch.device("cuda"))
    assert str(cli_error.value) == (
        "--quantize int8 runs on the CPU only, and this model is on cuda; add --device cpu "
        "(or --quantize fp32)"
    )
    with pytest.raises(ArgumentError, match="pass device='cpu'"):
        check_quantize_device("int8", torch.device("cuda"), api=True)
    check_quantize_device("int8", torch.device("cpu"))
    check_quantize_device(None, torch.device("cuda"))  # fp32 anywhere

    monkeypatch.setattr("charlm.model.quantize.quantized_engine", lambda: None)
    for command in (
        ["sample", char_run],
        ["evaluate", char_run, "--text", char_run / "config.yaml"],
    ):
        result = cli(*command, "--quantize", "int8")
        assert result.exit_code == 2 and "Traceback" not in result.stderr
        assert "--quantize int8: this PyTorch has no quantized CPU engine" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="quantize int8: this PyTorch has no quantized"):
        charlm.load(char_run, quantize="int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to refuse")
def test_int8_on_a_cuda_model_is_refused_end_to_end(char_run: Path) -> None:
    result = cli("sample", char_run, "--device", "cuda", "--quantize", "int8")
    assert result.exit_code == 2 and "add --device cpu" in result.stderr
