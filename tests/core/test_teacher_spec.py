"""Teacher specs: the grammar of ARCH, ARCH@E, A>B[loss], A+B and NxA, and canonical spellings."""
from __future__ import annotations

import math

import pytest

from kd_tune.core.teacher_spec import Ensemble, Single, SpecError, Step, StepLoss, architectures, parse


@pytest.mark.parametrize("text, tree", [
    ("wrn-28-4", Single("wrn-28-4")),
    ("wrn-28-4@20", Single("wrn-28-4", 20)),
    ("wrn-28-4>wrn-16-4", Step(Single("wrn-28-4"), "wrn-16-4")),
    ("wrn-28-4>wrn-16-4[kl:3]", Step(Single("wrn-28-4"), "wrn-16-4", StepLoss("kl", 3.0))),
    ("wrn-28-4>wrn-16-4[kl:inf:0.9]", Step(Single("wrn-28-4"), "wrn-16-4", StepLoss("kl", math.inf, 0.9))),
    ("cnn-32>cnn-16[mse]>cnn-8", Step(Step(Single("cnn-32"), "cnn-16", StepLoss("mse")), "cnn-8")),
    ("cnn-32+mlp-64", Ensemble((Single("cnn-32"), Single("mlp-64")))),
    ("3xcnn-32", Ensemble((Single("cnn-32", None, 0), Single("cnn-32", None, 1), Single("cnn-32", None, 2)))),
    ("2xcnn-32@5>cnn-8", Step(Ensemble((Single("cnn-32", 5, 0), Single("cnn-32", 5, 1))), "cnn-8")),
])
def test_specs_parse_into_their_trees(text, tree):
    assert parse(text) == tree


@pytest.mark.parametrize("text, canonical", [
    ("wrn-28-4", "wrn-28-4"),
    (" wrn-28-4@20 ", "wrn-28-4@20"),
    ("a-1 > b-2 [kl:3.0]", "a-1>b-2[kl:3]"),
    ("cnn-32+cnn-32+cnn-32", "3xcnn-32"),
    ("cnn-32+cnn-32+mlp-8", "cnn-32+cnn-32+mlp-8"),
    ("cnn-32>cnn-8[mse:0.50]", "cnn-32>cnn-8[mse:0.5]"),
])
def test_str_is_the_canonical_spelling_and_parses_back(text, canonical):
    assert str(parse(text)) == canonical
    assert parse(canonical) == parse(text)


def test_members_of_one_architecture_are_different_seeds():
    spec = parse("cnn-32+mlp-8+cnn-32")
    assert [(m.arch, m.seed_offset) for m in spec.members] == [("cnn-32", 0), ("mlp-8", 0), ("cnn-32", 1)]


def test_architectures_in_training_order():
    assert architectures(parse("2xcnn-32>cnn-16>cnn-8")) == ["cnn-32", "cnn-32", "cnn-16", "cnn-8"]


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("a>", "empty step"),
    ("a>>b", "empty step"),
    ("a@0", "stop epoch 0 must be >= 1"),
    ("a@x", "is not ARCH or ARCH@EPOCH"),
    ("1xa", "at least 2 members"),
    ("a>b[kl]", "is not one of kl:TAU"),
    ("a>b[huber:1]", "is not one of kl:TAU"),
    ("a>b[kl:0]", "tau 0 must be > 0"),
    ("a>b[mse:1.5]", "alpha 1.5 must be in [0, 1]"),
    ("a>b@3", "is not ARCH or ARCH[LOSS]"),
    ("a>b+c", "is not ARCH or ARCH[LOSS]"),
])
def test_bad_specs_say_what_is_allowed(text, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[")):
        parse(text)
