"""The rule-based sentence splitter of --split-sentences."""

import pytest

from megatron_ponder.data.preprocess.sentences import split_sentences

TEXT = ('Mr. Smith went to Washington. He met Dr. J. Doe, e.g. at noon! "Really?" she asked.\n'
        "Then 3 more came... Then none.\n\nA heading\nNew para here. lowercase follows. End")


def test_sentence_ends_abbreviations_initials_and_paragraphs():
    assert split_sentences(TEXT) == [
        "Mr. Smith went to Washington.",
        "He met Dr. J. Doe, e.g. at noon!",
        '"Really?" she asked.',
        "Then 3 more came...",
        "Then none.",
        "A heading\nNew para here. lowercase follows.",  # no break before a lowercase word
        "End",
    ]


def test_keep_newlines_keeps_the_line_breaks_between_sentences():
    sentences = split_sentences(TEXT, keep_newlines=True)
    assert sentences[2] == '"Really?" she asked.\n'
    assert sentences[4] == "Then none.\n\n"
    # Only the spaces around sentence breaks are gone.
    assert "".join(sentences).replace(" ", "") == TEXT.replace(" ", "")


@pytest.mark.parametrize("text, expected", [
    ("", []),
    ("  \n\n ", []),
    ("no punctuation at all", ["no punctuation at all"]),
    ("One.Two. Three", ["One.Two.", "Three"]),
    ("It costs 3.50 dollars. Cheap (really). (Yes) indeed.",
     ["It costs 3.50 dollars.", "Cheap (really).", "(Yes) indeed."]),
])
def test_edge_cases(text, expected):
    assert split_sentences(text) == expected
