"""Garbled-word rate (pathvlm.evals.garbled): glued word pieces are caught, English and the domain's words are not."""
import pytest

from pathvlm.evals import garbled as gb
from pathvlm.evals.garbled import Lexicon, garbled_metrics, garbled_words, tokenizer_words


def test_tokenizer_whole_word_tokens():
    from conftest import tiny_chat_tokenizer

    words = tokenizer_words(tiny_chat_tokenizer())
    assert "glands" in words and all(w.isalpha() and w == w.lower() for w in words)
    # a BPE piece that only continues a word ("selector" + "in") is not a whole word
    assert tokenizer_words({"Ġpolarity": 0, "selector": 1, "in": 2, "Ġ123": 3, "▁crypts": 4}) == {"polarity", "crypts"}


def test_issue_example_and_clean_text():
    lex = Lexicon({"loss", "of", "polarity", "and", "glands", "the", "are", "fuse"}, ("test",))
    assert garbled_words("<think>Loss of polarity andselectorin.</think>", lex) == ["andselectorin"]
    # inflections, capitals, hyphens, single letters and abbreviations pass
    assert garbled_words("The glands are fused. H&E, HGSC, fused-glands, polarity's", lex) == []


def test_default_lexicon_domain_words():
    lex = Lexicon.default(extra="Is this xylotomous tissue?")
    assert lex.known("cribriform") and lex.known("hyperchromasia")
    assert lex.known("xylotomous") and lex.known("desmoplastic") and not lex.known("andselectorin")
    assert "knowledge base and prompt sets" in lex.sources


def test_english_list_when_installed():
    if gb.english_words() is None:
        pytest.skip("pyspellchecker (eval extra) is not installed")
    lex = Lexicon.default()
    assert lex.known("moreover") and lex.known("yesterday") and not lex.known("andselectorin")
    assert "pyspellchecker English list" in lex.sources


def test_metrics():
    lex = Lexicon({"the", "crypts", "are", "regular"})
    m = garbled_metrics(["The crypts are regular.", "The crypts arexq regular.", ""], lex)
    assert m["garbled_word_rate"] == pytest.approx(1 / 8)
    assert m["garbled"]["answers_with_garbled_rate"] == pytest.approx(1 / 3)
    assert m["garbled"]["top"] == [["arexq", 1]] and m["garbled"]["n_words"] == 8
    assert garbled_metrics([], lex)["garbled_word_rate"] == 0.0
