"""One way to wire plugins: a typed registry per family, and declarative parameter ranges.

Every plugin family (detectors, enforcement backends, notifiers, CLI command groups) is a
:class:`Registry`: a plugin registers itself with ``@FAMILY.register("name")`` in its own
module, the family's package imports its built-in modules (so they are found in any
checkout, installed or not), and the code that wires them looks them up by name with
:meth:`Registry.get`, which names the known plugins and the nearest one on a typo.
Registration order is kept: it is the order the plugins run in.

:class:`Interval` is a plugin parameter's allowed range, after scikit-learn's
``_parameter_constraints`` (``Interval(Integral, 1, None, closed="left")``): it checks
a value and says what it must be, so a settings error names the key, the range and the fix.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Generic, Literal, TypeVar

from flowwarden.errors import ConfigError

T = TypeVar("T")


def nearest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (a typo's fix), or None when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return close[0] if close else None


class Registry(Generic[T]):
    """Named plugins of one family, in registration order.

    ``family`` names one plugin in messages ("detector"); ``key`` is the settings key
    that names them ("pipeline.detectors"), so an unknown name points at what to fix.
    """

    def __init__(self, family: str, key: str) -> None:
        self.family = family
        self.key = key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the plugin under ``name`` (a class's own ``name`` must agree)."""

        def add(obj: T) -> T:
            declared = getattr(obj, "name", name)
            if declared != name:
                raise ValueError(f"{self.family} registered as {name!r} but named {declared!r}")
            known = self._items.get(name)
            if known is not None and known is not obj:
                raise ValueError(f"two {self.family}s named {name!r}: {known!r} and {obj!r}")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str, *, where: str | None = None) -> T:
        """The plugin named ``name``; a :class:`ConfigError` naming the known ones if none."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(self.unknown(name, where)) from None

    def unknown(self, name: str, where: str | None = None) -> str:
        """The message for an unknown name: where it was found, the nearest and every known name."""
        close = nearest(name, self._items)
        hint = f"; did you mean '{close}'?" if close else ""
        return f"{where or self.key}: unknown {self.family} '{name}'{hint} (known: {', '.join(self._items)})"

    def check(self, names: Iterable[str], where: str | None = None) -> None:
        """Raise :class:`ConfigError` for the first name that is not registered."""
        for name in names:
            if name not in self._items:
                raise ConfigError(self.unknown(name, where))

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {self.names()})"


Closed = Literal["left", "right", "both", "neither"]


@dataclass(frozen=True)
class Interval:
    """The allowed values of a numeric parameter: integers or reals between two bounds.

    ``None`` is an open end; ``closed`` says which bounds are allowed themselves
    (``Interval(Real, 0, 1, closed="both")`` is a share, ``Interval(Integral, 1, None,
    closed="left")`` a positive count).
    """

    kind: type[Integral] | type[Real]
    low: float | None
    high: float | None
    closed: Closed = "both"

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, Real):
            return False
        x = float(value)
        if math.isnan(x):
            return False
        if self.kind is Integral and not x.is_integer():
            return False
        low_open = self.closed in ("right", "neither")
        high_open = self.closed in ("left", "neither")
        if self.low is not None and (x < self.low or (x == self.low and low_open)):
            return False
        return not (self.high is not None and (x > self.high or (x == self.high and high_open)))

    def __str__(self) -> str:
        what = "an integer" if self.kind is Integral else "a number"
        left = "[" if self.closed in ("left", "both") and self.low is not None else "("
        right = "]" if self.closed in ("right", "both") and self.high is not None else ")"
        low = "-inf" if self.low is None else _fmt(self.low)
        high = "inf" if self.high is None else _fmt(self.high)
        return f"{what} in {left}{low}, {high}{right}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)
