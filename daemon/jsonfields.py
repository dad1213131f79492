"""Typed fields of a decoded JSON object, each refusal a `ConfigError` naming the key's dotted path.

The one dialect the daemon's config reader uses for every section and every backend, so that
every bad value reads the same: `config key device.backend.config.timeout: expected a number
of at least 0, got 'soon'`.
"""

from __future__ import annotations

from rafs.errors import ConfigError

Text = str  # `Fields.str` shadows the builtin inside the class body


class Fields:
    """One JSON object at `where` (a dotted path, "" for the top level) and the keys it may hold."""

    def __init__(self, value: object, where: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where or '(top level)'}: expected an object")
        self.value: dict[str, object] = value
        self.where = where
        for key in value:
            if key not in allowed:
                raise self.error(key, "unknown key")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"config key {self.path(key)}: {why}")

    def has(self, key: str) -> bool:
        return key in self.value

    def object(self, key: str, allowed: tuple[str, ...]) -> Fields:
        """The nested object at `key` (empty when absent)."""
        return Fields(self.value.get(key, {}), self.path(key), allowed)

    def objects(self, key: str, allowed: tuple[str, ...]) -> list[Fields]:
        """The list of objects at `key` (empty when absent)."""
        items = self.value.get(key, [])
        if not isinstance(items, list):
            raise self.error(key, f"expected a list, got {items!r}")
        return [Fields(item, f"{self.path(key)}[{position}]", allowed) for position, item in enumerate(items)]

    def bool(self, key: str, default: bool) -> bool:
        value = self.value.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def int(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.value.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        """An integer or a decimal (seconds, rates), at least `minimum`."""
        value = self.value.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.error(key, f"expected a number of at least {minimum:g}, got {value!r}")
        return float(value)

    def str(self, key: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
        """A string; without a `default` the key is required."""
        if key not in self.value and default is None:
            raise self.error(key, "missing")
        value = self.value.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        if choices and value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return value

    def headers(self, key: Text) -> dict[Text, Text]:
        """An object of string values (HTTP headers)."""
        value = self.value.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
            raise self.error(key, "expected an object of strings")
        return dict(value)
