"""The gateway's word filter: obfuscations are caught, innocent look-alikes are left alone."""

from __future__ import annotations

import pytest

from serve.gate.word_filter import HEART, WordFilter, read_list


@pytest.fixture(scope="module")
def word_filter() -> WordFilter:
    return WordFilter.from_lists()


CAUGHT = [
    ("a nude woman", f"a {HEART} woman"),
    ("A NUDE woman", f"A {HEART} woman"),
    ("n.u.d.e beach", f"{HEART} beach"),
    ("n u d e art", f"{HEART} art"),
    ("n-u-d-e", HEART),
    ("n_u_d_e", HEART),
    ("nu.de", HEART),
    ("nuuuuude", HEART),
    ("nu\u200bde", HEART),  # zero-width space
    ("nu\u00adde", HEART),  # soft hyphen
    ("n\u200du\u200cde", HEART),  # zero-width joiner and non-joiner
    ("ｎｕｄｅ", HEART),  # fullwidth
    ("𝐧𝐮𝐝𝐞", HEART),  # mathematical bold
    ("nüdé", HEART),  # diacritics
    ("nu\u0308de", HEART),  # combining diaeresis
    ("рorn", HEART),  # Cyrillic р
    ("nudе", HEART),  # Cyrillic е
    ("ΝUDE", HEART),  # Greek capital nu
    ("p0rn", HEART),
    ("pr0n and p0rn", f"pr0n and {HEART}"),  # only listed words
    ("s3x", HEART),
    ("$ex", HEART),
    ("g0r3", HEART),
    ("1ingerie", HEART),
    ("a 4k nude! image", f"a 4k {HEART} image"),  # a stray symbol next to a word goes with it
    ("a blow job", f"a {HEART}"),
    ("blowjob", HEART),
    ("self-harm", HEART),
    ("nude, nude", f"{HEART}, {HEART}"),
]

INNOCENT = [
    "Scunthorpe United",
    "a classic class assembly",
    "the therapist's office",
    "the pen is red",
    "Essex and Sussex",
    "Sextant and sextet",
    "gorgeous gorge",
    "drape the grape",
    "happy new year 2024 in 4k",
    "a cat on a mat",
    "一只猫在雪地里 🐱",
    "hentaigana calligraphy",  # contains a listed word, is another word
    "analysis of a sextant",
    "sussex nude-coloured",  # hyphenated compound with a listed word IS caught below
]


@pytest.mark.parametrize("prompt, expected", CAUGHT)
def test_obfuscated_unsafe_words_are_replaced(word_filter, prompt, expected):
    filtered, count = word_filter.apply(prompt)
    assert filtered == expected
    assert count >= 1


@pytest.mark.parametrize("prompt", INNOCENT[:-1])
def test_innocent_look_alikes_are_unchanged(word_filter, prompt):
    assert word_filter.apply(prompt) == (prompt, 0)


def test_a_listed_word_inside_a_hyphenated_compound_is_still_a_word(word_filter):
    assert word_filter.apply("sussex nude-coloured") == (f"sussex {HEART}-coloured", 1)


def test_config_adds_and_replaces_lists(tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("# house rules\nbanana\nred   dragon  # a phrase\n")
    only_extra = WordFilter.from_lists(use_default=False, extra_words=["kiwi"], extra_files=[str(extra)])
    assert only_extra.apply("a nude banana") == (f"a nude {HEART}", 1)
    assert only_extra.apply("k.i.w.i and a red dragon") == (f"{HEART} and a {HEART}", 2)
    both = WordFilter.from_lists(use_default=True, extra_words=["kiwi"])
    assert both.apply("nude kiwi") == (f"{HEART} {HEART}", 2)
    assert read_list("a\n\n# c\n b # d\n") == {"a", "b"}


def test_long_obfuscated_prompts_are_filtered_word_by_word(word_filter):
    filtered, count = word_filter.apply("n.u.d.e " * 250)
    assert count == 250 and filtered == f"{HEART} " * 250
    assert word_filter.apply("a " * 1000) == ("a " * 1000, 0)
