"""A small registry by name (nevergrad style): ``estimator="cge"`` instead of ``CGE()``."""

from __future__ import annotations

from typing import Any, Callable, Dict


class Registry:
    """Maps lower-case names to factories of one kind of piece (estimators, evaluators, ...).

    Args:
        kind: what the registry holds, used in error messages (``"estimator"``).
        base: the class instances of which :meth:`create` passes through unchanged.
    """

    def __init__(self, kind: str, base: type):
        self.kind = kind
        self.base = base
        self._factories: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator adding ``cls`` under ``name`` (case-insensitive).

        Args:
            name: the registry key, e.g. ``"cge"``.

        Returns:
            The decorator; it returns the class unchanged.

        Raises:
            ValueError: (when the decorator is applied) another class is registered under ``name``.
        """
        key = name.lower()

        def decorate(cls: type) -> type:
            if key in self._factories and self._factories[key] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[key] = cls
            return cls

        return decorate

    def names(self) -> list:
        """The registered names, sorted."""
        return sorted(self._factories)

    def create(self, spec: Any, argument: str, **kwargs: Any) -> Any:
        """An instance from a name (``factory(**kwargs)``) or an instance (returned as is).

        Args:
            spec: a registered name (any case) or an instance of ``base``.
            argument: the user's argument name, used in error messages.
            **kwargs: constructor options; only with a name.

        Returns:
            The instance.

        Raises:
            ValueError: ``spec`` is an unknown name (the message lists the known ones).
            TypeError: ``spec`` is neither a name nor a ``base`` instance, or ``kwargs`` were
                given with an instance; a factory's own errors propagate.
        """
        if isinstance(spec, self.base):
            if kwargs:
                raise TypeError(f"{argument}: options {sorted(kwargs)} only apply when {argument} is a name")
            return spec
        if isinstance(spec, str):
            try:
                factory = self._factories[spec.lower()]
            except KeyError:
                raise ValueError(
                    f"{argument}: unknown {self.kind} {spec!r}; known: {', '.join(self.names())}"
                ) from None
            return factory(**kwargs)
        raise TypeError(
            f"{argument} must be a {self.kind} name ({', '.join(self.names())}) or a "
            f"{self.base.__name__} instance, got {type(spec).__name__}"
        )
