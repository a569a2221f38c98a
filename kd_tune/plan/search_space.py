"""Search spaces: blocks of axes expanded into the list of run configs a sweep trains.

A search space is a sequence of *blocks*. Each block maps config field names to the
values to try; a block expands to the Cartesian product of its axes, and the space to
the union of its blocks. Blocks let one sweep hold a non-rectangular grid, e.g. KL over
tau x alpha, MSE over alpha only, and a single CE baseline::

    TAU_GRID = (
        {"loss": ["kl"], "tau": [1, 3, 5, 20, math.inf], "alpha": [0.1, 0.5, 1.0]},
        {"loss": ["mse"], "alpha": [0.1, 0.5, 1.0]},
        {"loss": ["ce"]},
    )

Every expanded config is put in canonical form (:func:`canonical`) and duplicates are
dropped, so the same run is never trained twice within a sweep. :mod:`kd_tune.plan.planner` turns the
configs into planned trials.

A *sampled* space (:class:`SampledSpace`) has the same block shape, with distributions
where a grid has lists; a search (:mod:`kd_tune.sweep.search`) draws configs from it::

    TAU_SEARCH = SampledSpace.of(
        {"loss": ["kl"], "tau": loguniform(0.25, 64, points=[math.inf]), "alpha": uniform(0, 1)},
        {"loss": ["mse"], "alpha": uniform(0, 1)},
    )

The loss picks the block (each loss is in one block), so a field only exists where its
block has it: an MSE trial draws no tau. A list is a :class:`Choice`; :func:`uniform`
and :func:`loguniform` are ranges, and ``points`` adds single values to a range (the
``inf`` limit of tau). A grid is also a sampled space (:meth:`SampledSpace.from_grid`:
each list a choice). The command line spells a distribution as
:func:`parse_distribution` reads it: ``choice:1,3,inf``, ``uniform:0,1``,
``loguniform:0.25,64+inf``.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kd_tune.core import teacher_spec
from kd_tune.core.config import LOSS_OPTIONS, ConfigError, RunConfig, field_types, unused_fields

Block = Mapping[str, Sequence[Any]]
SearchSpace = Sequence[Block]

_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


def canonical(config: RunConfig) -> RunConfig:
    """The canonical form of a run: settings that cannot change it get fixed values.

    - ``ce`` uses neither tau nor alpha: stored as tau=1, alpha=0 (as for teachers).
    - ``mse`` has no temperature: tau=1.
    - a loss option (:data:`~kd_tune.core.config.LOSS_OPTIONS`: ``standardize``, ``dkd_*``,
      ``dist_*``) that the loss does not read is unset (None; False for ``standardize``),
      one the loss reads and that is not given is its published default.
    - noise rate 0 is no noise, whatever the type: noise_type="none", and without noise
      the noise seed draws nothing: noise_seed=0.
    - the teacher spec is spelled canonically (``cnn-32 + cnn-32`` is ``2xcnn-32``); a
      spec that does not parse is left for validation to report.
    """
    try:
        config = config.replace(teacher=str(teacher_spec.parse(config.teacher)))
    except teacher_spec.SpecError:
        pass
    if config.loss == "ce":
        config = config.replace(tau=1.0, alpha=0.0)
    elif config.loss == "mse":
        config = config.replace(tau=1.0)
    unset = {name: LOSS_OPTIONS[name].unset for name in unused_fields(config.loss) if name in LOSS_OPTIONS}
    if any(getattr(config, name) != value for name, value in unset.items()):
        config = config.replace(**unset)
    if config.noise_rate == 0.0:
        config = config.replace(noise_type="none", noise_seed=0)
    return config


def expand(base: RunConfig, space: SearchSpace, *, seeds: Iterable[int] = (0,)) -> list[RunConfig]:
    """Every config of ``space`` on top of ``base``, for each seed, canonical and unique.

    Order: blocks in order, axes varying fastest from the right, seeds innermost.
    Raises :class:`ConfigError` for an axis that is not a config field or has no values;
    the configs themselves are not validated here (see :func:`kd_tune.train.validation.validate_all`).
    """
    seeds = list(seeds)
    blocks = [{name: list(values) for name, values in block.items()} for block in space]
    problems = []
    for block in blocks:
        for name, values in block.items():
            if name not in _FIELDS:
                problems.append(f"search axis {name!r} is not a config field")
            elif not values:
                problems.append(f"search axis {name!r} has no values")
    if not seeds:
        problems.append("at least one seed is needed")
    if problems:
        raise ConfigError(problems)
    configs: dict[RunConfig, None] = {}
    for block in blocks:
        names = list(block)
        for values in itertools.product(*(block[n] for n in names)):
            point = dict(zip(names, values))
            for seed in seeds:
                configs.setdefault(canonical(base.replace(**point, seed=seed)), None)
    return list(configs)


def reading_blocks(field: str, blocks: Sequence[Block]) -> list[int]:
    """The indices of the blocks a new axis ``field`` goes to: those that have it already, else
    those whose losses all read it (every block for a field that is not loss-specific; a block
    without a loss counts as reading it)."""
    held = [i for i, block in enumerate(blocks) if field in block]
    if held:
        return held
    return [i for i, block in enumerate(blocks)
            if not any(field in unused_fields(loss) for loss in block.get("loss", ()))]


# -- sampled spaces ------------------------------------------------------------------------

# The value of a range's "<field>_point" parameter that means "drawn from the range".
IN_RANGE = "range"
# Fields a search does not draw: the seed follows from the trial's number (kd_tune.sweep.search).
_NOT_SAMPLED = ("seed",)


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (an Optuna categorical; a single value is fixed, not searched)."""

    values: tuple[Any, ...]

    def corners(self) -> tuple[Any, ...]:
        return self.values

    def to_json(self) -> dict[str, Any]:
        return {"choice": list(self.values)}


@dataclass(frozen=True)
class Range:
    """A number in [``low``, ``high``], uniform or log-uniform (``log``), or one of ``points``.

    With ``points`` a categorical ``<field>_point`` picks ``"range"`` or one of the
    points first (e.g. tau's ``inf`` limit, which no range holds). An integer field
    draws integers.
    """

    low: float
    high: float
    log: bool = False
    points: tuple[float, ...] = ()

    def corners(self) -> tuple[Any, ...]:
        return (self.low, self.high, *self.points)

    def to_json(self) -> dict[str, Any]:
        return {"range": [self.low, self.high], "log": self.log, "points": list(self.points)}


Distribution = Choice | Range


def uniform(low: float, high: float, *, points: Iterable[float] = ()) -> Range:
    """A uniform range [low, high], plus single values ``points``."""
    return Range(float(low), float(high), False, tuple(float(p) for p in points))


def loguniform(low: float, high: float, *, points: Iterable[float] = ()) -> Range:
    """A log-uniform range [low, high] (low > 0), plus single values ``points``."""
    return Range(float(low), float(high), True, tuple(float(p) for p in points))


def parse_distribution(field: str, text: str) -> Distribution:
    """A distribution of config field ``field`` from its command-line form.

    ``choice:V1,V2,...``, ``uniform:LOW,HIGH`` or ``loguniform:LOW,HIGH``; ``+V`` after a
    range adds the single value V (``loguniform:0.25,64+inf``). Values are read as the
    field's type (``inf`` is a number). Raises :class:`ConfigError` with one sentence.
    """
    where = f"{field}={text}"
    kind, sep, args = text.partition(":")
    if field not in _FIELDS:
        raise ConfigError([f"{where}: {field!r} is not a config field"])
    if kind not in ("choice", "uniform", "loguniform") or not sep:
        raise ConfigError([f"{where}: unknown distribution {kind!r}; use choice:V1,V2,..., uniform:LOW,HIGH or "
                           "loguniform:LOW,HIGH (+V adds the value V, e.g. loguniform:0.25,64+inf)"])
    kind_of, _ = field_types()[field]
    if kind == "choice":
        values = [v for v in args.split(",") if v.strip()]
        if not values:
            raise ConfigError([f"{where}: a choice needs at least one value"])
        return Choice(tuple(_value(where, kind_of, v) for v in values))
    bounds, *points = args.split("+")
    parts = [p for p in bounds.split(",") if p.strip()]
    if len(parts) != 2:
        raise ConfigError([f"{where}: a range needs LOW,HIGH"])
    low, high, *extra = (_number(where, v) for v in (*parts, *points))
    return Range(low, high, kind == "loguniform", tuple(extra))


def _number(where: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError([f"{where}: {text.strip()!r} is not a number"]) from None


def _value(where: str, kind: Any, text: str) -> Any:
    text = text.strip()
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ConfigError([f"{where}: {text!r} is not true or false"])
        return text.lower() == "true"
    if kind in (int, float):
        number = _number(where, text)
        if kind is int and not number.is_integer():
            raise ConfigError([f"{where}: {text!r} is not an integer"])
        return int(number) if kind is int else number
    return text


@dataclass(frozen=True)
class SampledSpace:
    """Blocks of distributions (see the module docstring); built by :meth:`of`, which checks them.

    ``blocks`` is a tuple of (field, distribution) pairs per block, in the given order.
    """

    blocks: tuple[tuple[tuple[str, Distribution], ...], ...]

    @classmethod
    def of(cls, *blocks: Mapping[str, Any]) -> SampledSpace:
        """A checked space from blocks of ``field -> distribution`` (a list is a :class:`Choice`).

        Raises :class:`ConfigError` listing every problem: unknown fields, empty choices,
        empty or unusable ranges, a loss in two blocks, a block drawing what its loss does
        not use, or one field with two different distributions.
        """
        space = cls(tuple(tuple((name, _distribution(name, value)) for name, value in block.items())
                          for block in blocks))
        problems = space._problems()
        if problems:
            raise ConfigError(problems)
        return space

    @classmethod
    def from_grid(cls, space: SearchSpace) -> SampledSpace:
        """The grid ``space`` as a sampled space: every axis a choice of its values."""
        return cls.of(*space)

    @classmethod
    def from_json(cls, blocks: Sequence[Mapping[str, Mapping[str, Any]]]) -> SampledSpace:
        """Inverse of :meth:`to_json`."""
        def load(form: Mapping[str, Any]) -> Distribution:
            if "choice" in form:
                return Choice(tuple(form["choice"]))
            return Range(*map(float, form["range"]), bool(form["log"]), tuple(map(float, form["points"])))

        return cls.of(*({name: load(form) for name, form in block.items()} for block in blocks))

    def to_json(self) -> list[dict[str, Any]]:
        """Plain values (``inf`` stays a float): the form :meth:`from_json` reads."""
        return [{name: dist.to_json() for name, dist in block} for block in self.blocks]

    def replace(self, field: str, dist: Distribution) -> SampledSpace:
        """``field`` drawn from ``dist`` in every block that has it; if none has it, added to
        every block whose losses all read it (see :func:`reading_blocks`)."""
        blocks = [dict(block) for block in self.blocks]
        chosen = reading_blocks(field, [{name: d.values if isinstance(d, Choice) else () for name, d in block.items()}
                                        for block in blocks])
        if not chosen:
            raise ConfigError([f"{field}: no block of this space has a loss that reads it"])
        return SampledSpace.of(*({**block, field: dist} if i in chosen else block for i, block in enumerate(blocks)))

    def with_losses(self, losses: Sequence[str]) -> SampledSpace:
        """Only the blocks (and choices) of ``losses``."""
        kept = []
        for block in map(dict, self.blocks):
            if "loss" in block:
                names = [x for x in block["loss"].values if x in losses]
                if not names:
                    continue
                block["loss"] = Choice(tuple(names))
            kept.append(block)
        return SampledSpace.of(*kept)

    # -- what it holds ---------------------------------------------------------------------

    def text(self) -> str:
        """The space in one line, block by block: ``kl: tau=loguniform:0.25,64+inf alpha=uniform:0,1 | mse: ...``."""
        return " | ".join(" ".join(f"{name}={describe(d)}" if name != "loss" else ",".join(d.values) + ":"
                                   for name, d in block) for block in self.blocks)

    def losses(self) -> list[str]:
        """Every loss the blocks name, in order (empty when no block names one)."""
        return list(dict.fromkeys(x for block in self.blocks for name, d in block if name == "loss"
                                  for x in d.values))

    def values(self, field: str) -> str:
        """The distribution of ``field`` as the command line spells it, or '' when no block has it."""
        for block in self.blocks:
            for name, dist in block:
                if name == field:
                    return describe(dist)
        return ""

    def corners(self, base: RunConfig) -> list[RunConfig]:
        """A few canonical configs that reach every value a draw can take at its extremes.

        Per block and loss: every field at its first value (a choice's first, a range's
        low end), and from there each field alone at each of its corners (every choice,
        both ends and the points of a range). Seed 0. For checking a space before it is
        searched, and for planning what does not depend on the draws (teachers, data).
        """
        out: dict[RunConfig, None] = {}
        for block in self.blocks:
            fields = dict(block)
            losses = fields.pop("loss").values if "loss" in fields else (base.loss,)
            for loss in losses:
                first = {name: dist.corners()[0] for name, dist in fields.items()}
                out.setdefault(canonical(base.replace(loss=loss, seed=0, **first)), None)
                for name, dist in fields.items():
                    for value in dist.corners():
                        out.setdefault(canonical(base.replace(loss=loss, seed=0, **{**first, name: value})), None)
        return list(out)

    def tied_combinations(self, base: RunConfig, key: Callable[[RunConfig], Hashable]) -> list[RunConfig]:
        """The :meth:`corners`, and every combination of the choices ``key`` depends on.

        ``key`` maps a canonical config to what must be made for it before a search (its
        teacher's key): per block and loss, a choice is tied when varying it alone from
        some corner changes ``key``, and every combination of the tied choices is added,
        the other fields at their first values. Then every ``key`` a draw can have is the
        key of a config returned (ranges aside: see :meth:`ranges`). Seed 0.
        """
        corners = self.corners(base)
        out = dict.fromkeys(corners)
        for block in self.blocks:
            fields = dict(block)
            losses = fields.pop("loss").values if "loss" in fields else (base.loss,)
            choices = {name: dist.values for name, dist in fields.items() if isinstance(dist, Choice)}
            first = {name: dist.corners()[0] for name, dist in fields.items()}
            for loss in losses:
                mine = [c for c in corners if c.loss == loss]
                tied = [name for name, values in choices.items()
                        if any(key(canonical(c.replace(**{name: v}))) != key(c) for c in mine for v in values)]
                start = base.replace(loss=loss, seed=0, **first)
                for values in itertools.product(*(choices[name] for name in tied)):
                    out.setdefault(canonical(start.replace(**dict(zip(tied, values)))), None)
        return list(out)

    def ranges(self) -> list[tuple[str, str, Range]]:
        """(loss, field, range) of every range, per loss of its block (the loss: the base's when None)."""
        out = []
        for block in self.blocks:
            fields = dict(block)
            losses = fields.pop("loss").values if "loss" in fields else ("",)
            out += [(loss, name, dist) for loss in losses for name, dist in fields.items() if isinstance(dist, Range)]
        return out

    # -- drawing and reading back ------------------------------------------------------------

    def sample(self, trial: Any, base: RunConfig) -> RunConfig:
        """Draw one canonical config through ``trial``'s ``suggest_*`` methods (an Optuna trial).

        Parameters: ``loss`` when the space has several losses; each searched field by its
        name; ``<field>_point`` before a range with points. A choice of one value is fixed.
        """
        losses = self.losses()
        loss = trial.suggest_categorical("loss", losses) if len(losses) > 1 else (losses or [base.loss])[0]
        values = {}
        types = field_types()
        for name, dist in self._block_of(loss):
            if name == "loss":
                continue
            if isinstance(dist, Choice):
                values[name] = dist.values[0] if len(dist.values) == 1 else trial.suggest_categorical(name, dist.values)
                continue
            point = trial.suggest_categorical(f"{name}_point", [IN_RANGE, *dist.points]) if dist.points else IN_RANGE
            if point != IN_RANGE:
                values[name] = point
            elif types[name][0] is int:
                values[name] = trial.suggest_int(name, int(dist.low), int(dist.high), log=dist.log)
            else:
                values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        return canonical(base.replace(loss=loss, **values))

    def params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters :meth:`sample` drew for a run with these field values (a config as a dict)."""
        losses = self.losses()
        loss = values["loss"] if losses else None
        out: dict[str, Any] = {"loss": loss} if len(losses) > 1 else {}
        for name, dist in self._block_of(loss):
            value = values[name]
            if name == "loss" or (isinstance(dist, Choice) and len(dist.values) == 1):
                continue
            if isinstance(dist, Range) and dist.points:
                point = next((p for p in dist.points if p == value), IN_RANGE)
                out[f"{name}_point"] = point
                if point != IN_RANGE:
                    continue
            out[name] = value
        return out

    def label(self, values: Mapping[str, Any]) -> str:
        """The loss and the searched values of a run (a config as a dict): ``kl tau=3.21 alpha=0.432``."""
        parts = [str(values["loss"])]
        for name, dist in self._block_of(values["loss"] if self.losses() else None):
            if name != "loss" and not (isinstance(dist, Choice) and len(dist.values) == 1):
                value = values[name]
                parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
        return " ".join(parts)

    def distributions(self) -> dict[str, Any]:
        """Every parameter :meth:`sample` can draw -> its Optuna distribution."""
        # Optuna (0.24 CPU-s to import) only where a search asks for its distributions.
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        losses = self.losses()
        out: dict[str, Any] = {"loss": CategoricalDistribution(losses)} if len(losses) > 1 else {}
        types = field_types()
        for block in self.blocks:
            for name, dist in block:
                if name == "loss" or name in out:
                    continue
                if isinstance(dist, Choice):
                    if len(dist.values) > 1:
                        out[name] = CategoricalDistribution(dist.values)
                    continue
                if dist.points:
                    out[f"{name}_point"] = CategoricalDistribution([IN_RANGE, *dist.points])
                out[name] = (IntDistribution(int(dist.low), int(dist.high), log=dist.log) if types[name][0] is int
                             else FloatDistribution(dist.low, dist.high, log=dist.log))
        return out

    def _block_of(self, loss: str | None) -> tuple[tuple[str, Distribution], ...]:
        for block in self.blocks:
            names = dict(block).get("loss")
            if names is None or loss in names.values:
                return block
        raise ValueError(f"loss {loss!r} is in no block of this space")

    def _problems(self) -> list[str]:
        p: list[str] = []
        if not self.blocks:
            p.append("the search space has no block")
        seen: dict[str, Distribution] = {}
        owner: dict[str, int] = {}
        for i, block in enumerate(self.blocks):
            fields = dict(block)
            if len(self.blocks) > 1 and "loss" not in fields:
                p.append(f"block {i + 1} names no loss; with several blocks the loss picks the block")
            for name, dist in block:
                p += _dist_problems(name, dist)
                if name not in _FIELDS:
                    continue
                if name != "loss" and seen.setdefault(name, dist) != dist:
                    p.append(f"{name} has two distributions ({describe(seen[name])} and {describe(dist)}); "
                             "a field is drawn from one")
            for loss in fields["loss"].values if isinstance(fields.get("loss"), Choice) else ():
                if owner.setdefault(loss, i) != i:
                    p.append(f"loss {loss!r} is in blocks {owner[loss] + 1} and {i + 1}; each loss picks one block")
                unused = [name for name in unused_fields(loss) if name in fields]
                if unused:
                    p.append(f"the {loss} block draws {', '.join(unused)}, which {loss} does not use")
        return list(dict.fromkeys(p))


def describe(dist: Distribution) -> str:
    """A distribution as the command line spells it (see :func:`parse_distribution`)."""
    def text(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    if isinstance(dist, Choice):
        return "choice:" + ",".join(map(text, dist.values))
    head = f"{'loguniform' if dist.log else 'uniform'}:{text(dist.low)},{text(dist.high)}"
    return head + "".join(f"+{text(p)}" for p in dist.points)


def _distribution(name: str, value: Any) -> Distribution:
    """``value`` as a distribution of field ``name``; a choice's numbers as the field's type (1 -> 1.0)."""
    if isinstance(value, Range):
        return value
    if not isinstance(value, Choice):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ConfigError([f"{name}: {value!r} is not a distribution; give a list of values, uniform(...) "
                               "or loguniform(...)"])
        value = Choice(tuple(tuple(v) if isinstance(v, list) else v for v in value))
    if name in _FIELDS and field_types()[name][0] is float:
        return Choice(tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value.values))
    return value


def _dist_problems(name: str, dist: Distribution) -> list[str]:
    if name not in _FIELDS:
        return [f"search field {name!r} is not a config field"]
    if name in _NOT_SAMPLED:
        return [f"{name} is not drawn: a search's trials take the training seeds in turn (--seeds)"]
    if isinstance(dist, Choice):
        if not dist.values:
            return [f"{name}: the choice has no values"]
        if len(dist.values) > 1 and not all(isinstance(v, (bool, int, float, str)) for v in dist.values):
            return [f"{name}: a searched choice holds numbers, strings or booleans, got {list(dist.values)!r}"]
        return []
    kind, _ = field_types()[name]
    if kind not in (int, float):
        return [f"{name}: a range needs a numeric field ({name} is {kind.__name__})"]
    if not (math.isfinite(dist.low) and math.isfinite(dist.high)):
        return [f"{name}: the range [{dist.low:g}, {dist.high:g}] needs finite ends (add inf as a point: +inf)"]
    if not dist.low < dist.high:
        return [f"{name}: the range [{dist.low:g}, {dist.high:g}] is empty (LOW must be < HIGH)"]
    if dist.log and dist.low <= 0:
        return [f"{name}: a log-uniform range needs LOW > 0, got {dist.low:g}"]
    if kind is int and not (dist.low.is_integer() and dist.high.is_integer()):
        return [f"{name}: an integer range needs integer ends, got [{dist.low:g}, {dist.high:g}]"]
    if any(math.isnan(x) for x in dist.points):
        return [f"{name}: a point of the range is not a number"]
    return []
