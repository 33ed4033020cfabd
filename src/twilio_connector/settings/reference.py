"""The configuration reference, in Markdown, from the settings' declarations (settings/schema.py).

docs/reference.md is its output (`python -m twilio_connector.settings.reference > docs/reference.md`), and a test
fails when the two differ: the page cannot drift from the code."""

from __future__ import annotations

from typing import Any

from .config import ENV_PREFIX
from .schema import OPTIONS, Settings

__all__ = ["settings_reference"]

_INTRO = """# Configuration reference

Generated from the settings' declarations in the code (`src/twilio_connector/settings/schema.py`); do not edit by hand. Each setting can be given
in the TOML file under its name, in the environment as `TWILIO_CONNECTOR_<NAME>` (or under the other names
shown, the original Greengrass ones among them), and, where a flag is shown, on the command line; later
sources win: defaults, file, environment, flags. Secrets have no flag: other users can read command lines.
"""


def _shown(name: str, value: Any) -> str:
    if name == "journal_path":
        return "see meaning"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`" if value else "`[]`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def settings_reference() -> str:
    defaults = Settings()
    lines = [_INTRO]
    sections: dict[str, list[str]] = {}
    for name, option in OPTIONS.items():
        names = ", ".join(f"`{variable}`" for variable in (ENV_PREFIX + name.upper(), *option.aliases))
        flag = f"`{option.flag}`" if option.flag else ""
        row = f"| `{name}` | {_shown(name, getattr(defaults, name))} | {names} | {flag} | {option.doc} |"
        sections.setdefault(option.section, []).append(row)
    for section, rows in sections.items():
        lines += [f"## {section}", "", "| setting | default | environment | flag | meaning |", "|---|---|---|---|---|"]
        lines += [*rows, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_reference(), end="")
