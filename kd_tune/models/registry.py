"""Name -> model registry.

A model name such as ``"wrn-40-2"`` is resolved by matching it (``re.fullmatch``)
against registered regular expressions in registration order; the first match
wins. The builder of that entry is called as::

    builder(*groups, num_classes=num_classes, in_channels=in_channels)

where ``groups`` are the match groups, converted to ``int`` when they consist
of decimal digits (the usual case: depths, widths) and otherwise passed as
strings (``None`` for a group that did not participate). A builder signals an
invalid parameter (e.g. a WRN depth that is not 6n+4) by raising ``ValueError``;
:func:`build` re-raises it with the name and the list of valid patterns.

The entries live in :data:`MODELS`, a :class:`kd_tune.core.registry.Registry` keyed by
pattern, and follow its re-registration rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from kd_tune.core.registry import Registry

ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model pattern")
"""Builders keyed by their regex pattern, with ``description`` and ``display`` as info.

Registration order is match order, so :func:`build` walks :meth:`Registry.names`.
"""


def register_model(
    pattern: str,
    builder: ModelBuilder,
    description: str,
    *,
    display: str | None = None,
) -> None:
    """Make every name fully matching ``pattern`` buildable by :func:`build`.

    Args:
        pattern: regular expression matched with ``re.fullmatch``; its groups
            become the builder's positional arguments.
        builder: ``builder(*groups, num_classes=..., in_channels=...)`` returning
            an ``nn.Module`` whose ``forward(x, return_features=False)`` follows
            the :class:`~kd_tune.models.classifier.Classifier` convention and
            which has an ``int`` attribute ``feature_dim``.
        description: one-line human description shown by :func:`model_patterns`.
        display: human-readable form of the pattern (e.g. ``"wrn-D-W"``);
            defaults to ``pattern`` itself.

    Raises:
        ValueError: empty or invalid regex, or a pattern already registered
            (registering the same builder, description and display again is a no-op).
        TypeError: ``builder`` is not callable.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a non-empty regex string, got {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {err}") from err
    if not callable(builder):
        raise TypeError(f"builder for {pattern!r} must be callable, got {type(builder).__name__}")
    MODELS.register(pattern, builder, description=description, display=display or pattern)


def model_patterns() -> list[str]:
    """One line per registered pattern: ``"<display>  <description>"``, aligned."""
    infos = [MODELS.info(pattern) for pattern in MODELS.names()]
    if not infos:
        return []
    pad = max(len(info["display"]) for info in infos)
    return [f"{info['display'].ljust(pad)}  {info['description']}" for info in infos]


def _patterns_help() -> str:
    return "valid model patterns:\n" + "\n".join(f"  {line}" for line in model_patterns())


def _check_count(arg: str, value: object, minimum: int) -> None:
    # bool is an int subclass; True as a class count is a bug, not a request.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{arg} must be an integer >= {minimum}, got {value!r}")


def _convert(group: str | None) -> int | str | None:
    if group is not None and group.isdecimal():
        return int(group)
    return group


def build(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a freshly initialised model by name.

    Args:
        name: a model name, e.g. ``"wrn-40-2"``, ``"resnet-20"``, ``"cnn-8"``.
        num_classes: number of logits, >= 2.
        in_channels: input image channels, >= 1 (3 for CIFAR, 1 for digits).

    Returns:
        A module with ``forward(x, return_features=False)`` mapping
        ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``, or to
        ``(logits, features)`` with features ``(B, model.feature_dim)``.
        Weights depend only on torch's global RNG state.

    Raises:
        ValueError: bad ``num_classes`` / ``in_channels``, or a name that matches
            no pattern or has invalid parameters; the message lists all patterns.
        TypeError: ``name`` is not a string, or the builder broke its contract.
    """
    _check_count("num_classes", num_classes, 2)
    _check_count("in_channels", in_channels, 1)
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")

    for pattern in MODELS.names():
        # re caches compiled patterns, so matching by pattern string costs no recompilation.
        match = re.fullmatch(pattern, name)
        if match is None:
            continue
        args = [_convert(group) for group in match.groups()]
        try:
            model = MODELS.get(pattern)(*args, num_classes=num_classes, in_channels=in_channels)
        except ValueError as err:
            raise ValueError(f"invalid model name {name!r}: {err}\n{_patterns_help()}") from err
        _check_model(name, model)
        return model

    raise ValueError(f"unknown model name {name!r}\n{_patterns_help()}")


def _check_model(name: str, model: object) -> None:
    # Catch broken user builders here rather than deep inside a training loop.
    if not isinstance(model, nn.Module):
        raise TypeError(f"builder for {name!r} returned {type(model).__name__}, not nn.Module")
    feature_dim = getattr(model, "feature_dim", None)
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
        raise TypeError(
            f"model built for {name!r} must have a positive int attribute feature_dim, "
            f"got {feature_dim!r}"
        )
