"""Minimisation keeps exactly the declared fields, and nothing else."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.minimise import minimise, pointer_tokens

ANSWER: dict[str, Any] = {
    "annee": 2024,
    "revenu_fiscal_reference": 23450,
    "nombre_parts": 2.5,
    "situation_familiale": "marié(e)",
    "adresse": {"rue": "1 rue de la Paix", "ville": "Démoville", "code": "99999"},
    "enfants": [
        {"prenom": "Alice", "age": 8},
        {"prenom": "Bob", "age": 5},
        {"prenom": "Chloé", "age": 2},
    ],
    "a/b": "slash",
    "m~n": "tilde",
    "": "empty key",
    "nul": None,
}


def test_keeps_only_declared_top_level_fields() -> None:
    assert minimise(ANSWER, ["/annee", "/revenu_fiscal_reference"]) == {
        "annee": 2024,
        "revenu_fiscal_reference": 23450,
    }


def test_nested_keys_are_rebuilt_in_place() -> None:
    assert minimise(ANSWER, ["/adresse/ville", "/adresse/code"]) == {
        "adresse": {"ville": "Démoville", "code": "99999"}
    }


def test_objects_and_lists_at_the_end_of_a_pointer_are_kept_whole() -> None:
    assert minimise(ANSWER, ["/adresse", "/enfants"]) == {
        "adresse": ANSWER["adresse"],
        "enfants": ANSWER["enfants"],
    }


def test_array_index_keeps_only_that_element_with_null_placeholders() -> None:
    assert minimise(ANSWER, ["/enfants/1/age"]) == {"enfants": [None, {"age": 5}]}


def test_several_pointers_into_one_array_merge() -> None:
    assert minimise(ANSWER, ["/enfants/2/age", "/enfants/0/prenom", "/enfants/0/age"]) == {
        "enfants": [{"prenom": "Alice", "age": 8}, None, {"age": 2}]
    }


def test_a_whole_value_and_a_pointer_inside_it_give_the_whole_value() -> None:
    expected = {"adresse": ANSWER["adresse"]}
    assert minimise(ANSWER, ["/adresse", "/adresse/ville"]) == expected
    assert minimise(ANSWER, ["/adresse/ville", "/adresse"]) == expected


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("/a~1b", {"a/b": "slash"}),
        ("/m~0n", {"m~n": "tilde"}),
        ("/", {"": "empty key"}),
    ],
)
def test_rfc6901_escapes(pointer: str, expected: dict[str, Any]) -> None:
    assert minimise(ANSWER, [pointer]) == expected


def test_tilde_one_is_decoded_after_tilde_zero() -> None:
    # RFC 6901 §4: "~01" is "~1", not "/".
    assert pointer_tokens("/~01") == ("~1",)
    assert minimise({"~1": "x", "/": "y"}, ["/~01"]) == {"~1": "x"}


@pytest.mark.parametrize(
    "pointer",
    [
        "/absent",
        "/adresse/absent",
        "/annee/0",  # through a scalar
        "/enfants/3/age",  # index out of range
        "/enfants/-",  # the element after the last one
        "/enfants/01/age",  # leading zero is not an index
        "/enfants/x",
        "/nul/deeper",
    ],
)
def test_missing_pointers_are_absent(pointer: str) -> None:
    assert minimise(ANSWER, [pointer]) == {}


def test_null_values_are_kept() -> None:
    assert minimise(ANSWER, ["/nul"]) == {"nul": None}


@pytest.mark.parametrize("document", [[{"annee": 2024}], "text", 42, None, True])
def test_top_level_non_object_gives_empty_object(document: Any) -> None:
    assert minimise(document, ["/annee", "/0/annee"]) == {}


def test_no_pointers_release_nothing() -> None:
    assert minimise(ANSWER, []) == {}


def test_input_is_not_modified_and_result_does_not_alias_it() -> None:
    before = copy.deepcopy(ANSWER)
    result = minimise(ANSWER, ["/adresse", "/enfants/0"])
    result["adresse"]["ville"] = "ailleurs"
    result["enfants"][0]["prenom"] = "Zoé"
    assert before == ANSWER


@pytest.mark.parametrize("pointer", ["", "annee", "/a~2", "/a~", "#/annee"])
def test_invalid_pointers_are_refused(pointer: str) -> None:
    with pytest.raises(ValueError, match="must"):
        minimise(ANSWER, [pointer])
