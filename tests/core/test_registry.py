"""The shared name -> object registry and the per-test restore of the real registries."""

from __future__ import annotations

import pytest

from kd_tune.core.registry import Registry
from kd_tune.data import DATASETS, dataset_names, register_dataset
from kd_tune.models import MODELS, model_patterns, register_model
from kd_tune.train.losses import LOSSES, loss_names, register_kd_term


def test_call_form_returns_the_object_and_keeps_order():
    widgets = Registry("widget")
    first, second = object(), object()
    assert widgets.register("zeta", first) is first
    assert widgets.register("alpha", second, size=3) is second
    assert widgets.names() == ["zeta", "alpha"]
    assert widgets.get("zeta") is first and widgets.get("alpha") is second
    assert dict(widgets.info("alpha")) == {"size": 3} and dict(widgets.info("zeta")) == {}
    assert "alpha" in widgets and "beta" not in widgets and ["alpha"] not in widgets


def test_decorator_form_registers_and_returns_the_function():
    widgets = Registry("widget")

    @widgets.register("double", cheap=True)
    def double(x: int) -> int:
        return 2 * x

    assert double(4) == 8  # still the plain function
    assert widgets.get("double") is double
    assert widgets.info("double")["cheap"] is True


def test_info_is_read_only_and_a_copy():
    widgets = Registry("widget")
    given = {"size": 1}
    widgets.register("w", object(), **given)
    given["size"] = 2
    assert widgets.info("w")["size"] == 1
    with pytest.raises(TypeError):
        widgets.info("w")["size"] = 3  # type: ignore[index]


def test_same_object_again_is_a_no_op():
    widgets = Registry("widget")
    obj = object()
    widgets.register("w", obj, size=1)
    assert widgets.register("w", obj, size=1) is obj
    assert widgets.names() == ["w"]


def test_other_object_under_a_taken_name_is_refused():
    widgets = Registry("widget")
    obj = object()
    widgets.register("w", obj)
    with pytest.raises(ValueError, match=r"^widget 'w' is already registered$"):
        widgets.register("w", object())
    with pytest.raises(ValueError, match=r"^widget 'w' is already registered$"):
        widgets.register("w")(lambda: None)
    assert widgets.get("w") is obj


def test_same_object_with_other_info_is_refused():
    widgets = Registry("widget")
    obj = object()
    widgets.register("w", obj, size=1, colour="red")
    with pytest.raises(ValueError, match=r"^widget 'w' is already registered with different size$"):
        widgets.register("w", obj, size=2, colour="red")
    with pytest.raises(ValueError, match=r"with different colour, shape$"):
        widgets.register("w", obj, size=1, shape="round")
    with pytest.raises(ValueError, match=r"with different size$"):
        widgets.register("w", obj, size=None, colour="red")  # None is a value, not "not given"
    assert dict(widgets.info("w")) == {"size": 1, "colour": "red"}


def test_unknown_name_lists_the_known_names_sorted():
    widgets = Registry("widget")
    with pytest.raises(ValueError, match=r"^unknown widget 'x'; known: \(none\)$"):
        widgets.get("x")
    for name in ("c", "a", "b"):
        widgets.register(name, object())
    with pytest.raises(ValueError, match=r"^unknown widget 'x'; known: a, b, c$"):
        widgets.get("x")
    with pytest.raises(ValueError, match=r"^unknown widget 'x'; known: a, b, c$"):
        widgets.info("x")
    with pytest.raises(ValueError, match=r"^unknown widget \['a'\]; known: a, b, c$"):
        widgets.get(["a"])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", None, 3])
def test_names_must_be_non_empty_strings(name):
    widgets = Registry("widget")
    with pytest.raises(ValueError, match="widget name must be a non-empty string"):
        widgets.register(name, object())
    assert widgets.names() == []


def test_restore_puts_back_exactly_the_snapshot():
    widgets = Registry("widget")
    kept = widgets.register("kept", object(), size=1)
    snapshot = widgets.snapshot()
    widgets.register("added", object())
    assert [entry.name for entry in snapshot.entries] == ["kept"]  # unaffected by later changes
    widgets.restore(snapshot)
    assert widgets.names() == ["kept"] and widgets.get("kept") is kept
    assert dict(widgets.info("kept")) == {"size": 1}
    widgets.register("added", object())  # the name is free again
    widgets.restore(snapshot)
    assert widgets.names() == ["kept"]


def test_restore_refuses_another_kind():
    widgets, gadgets = Registry("widget"), Registry("gadget")
    with pytest.raises(ValueError, match="not a snapshot of a widget registry"):
        widgets.restore(gadgets.snapshot())


def _linear(width, *, num_classes, in_channels):
    raise AssertionError("never built")


# The next two tests run in file order: the first leaves entries in all three real
# registries, the second sees them gone only if the conftest fixture restored them.
def test_leaves_entries_in_the_real_registries():
    register_model(r"leaktest-(\d+)", _linear, "left behind?", display="leaktest-W")
    register_dataset("leaktest", lambda data_dir, download: None, augment=False)
    register_kd_term("leaktest", lambda s, t, tau: (s - t).sum())
    assert "leaktest" in dataset_names() and "leaktest" in loss_names()
    assert any(line.startswith("leaktest-W") for line in model_patterns())


def test_conftest_restored_the_real_registries():
    assert "leaktest" not in DATASETS and "leaktest" not in LOSSES
    assert r"leaktest-(\d+)" not in MODELS
    assert not any(line.startswith("leaktest-W") for line in model_patterns())
    # ...and the built-ins survived the restore.
    assert {"digits", "cifar10", "cifar100"} <= set(dataset_names())
    assert loss_names()[:3] == ["ce", "kl", "mse"]
    assert len(MODELS.names()) >= 4
