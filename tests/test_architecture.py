"""The import contract: which part of the package may import which (docs/development.md draws it).

- `domain` is pure: it imports nothing outside itself, and no library that does I/O.
- `ports` (the seams: journal, HTTP, messaging) imports only `domain`.
- The adapters (`journal`, `mqtt`, `twilio`, `ops`) implement ports; they never import each other, the engine
  or the commands.
- The engine sees the outside only through `ports` (and reports to `ops`): no adapter, no I/O library.
- `settings` imports only `domain` (and itself).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "src" / "twilio_connector"
ADAPTERS = ("journal", "mqtt", "greengrass", "twilio", "ops")
#: Libraries that reach outside the process (or the clock's event loop): never in domain.
IO_LIBRARIES = frozenset(
    {"asyncio", "socket", "ssl", "sqlite3", "psycopg", "aiohttp", "paho", "boto3", "subprocess", "httptools", "uvloop"}
)


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """The package's modules that `path` imports (dotted, without the package's name), and the libraries."""
    me = _module(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    own, libraries = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (own if alias.name.startswith("twilio_connector") else libraries).add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if (node.module or "").startswith("twilio_connector"):
                    own.add((node.module or "").removeprefix("twilio_connector").lstrip("."))
                else:
                    libraries.add((node.module or "").split(".")[0])
                continue
            base = package[: len(package) - node.level + 1] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            if node.module is None:  # from . import a, b: each name is a module
                own.update(".".join([*target, alias.name]) for alias in node.names)
            else:
                own.add(".".join(target))
    return own, libraries


def _graph() -> dict[str, tuple[set[str], set[str]]]:
    return {_module(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def _part(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def test_the_import_graph_is_read() -> None:
    graph = _graph()
    assert "engine.core" in graph["service"][0]
    assert "domain.contract" in graph["domain.admission"][0]
    assert "asyncio" in graph["engine.dispatch"][1]


def test_domain_is_pure() -> None:
    for module, (own, libraries) in _graph().items():
        if _part(module) != "domain":
            continue
        assert {_part(target) for target in own} <= {"domain"}, f"{module} imports {sorted(own)}"
        assert not libraries & IO_LIBRARIES, f"{module} imports {sorted(libraries & IO_LIBRARIES)}"


def test_adapters_do_not_import_each_other_nor_the_engine() -> None:
    for module, (own, _) in _graph().items():
        if _part(module) not in ADAPTERS:
            continue
        allowed = {"domain", "ports", "settings", "_version", _part(module)}  # _version: a constant, a leaf
        assert {_part(target) for target in own} <= allowed, f"{module} imports {sorted(own)}"


def test_the_engine_sees_ports_not_adapters() -> None:
    for module, (own, libraries) in _graph().items():
        if _part(module) != "engine":
            continue
        parts = {_part(target) for target in own}
        assert parts <= {"domain", "engine", "ports", "ops", "settings"}, f"{module} imports {sorted(own)}"
        assert not libraries & {"paho", "sqlite3", "psycopg", "httptools"}, module


def test_ports_import_only_the_domain() -> None:
    for module, (own, _) in _graph().items():
        if _part(module) == "ports":
            assert {_part(target) for target in own} <= {"domain", "ports"}, f"{module} imports {sorted(own)}"


def test_settings_import_only_the_domain() -> None:
    for module, (own, _) in _graph().items():
        if _part(module) == "settings":
            assert {_part(target) for target in own} <= {"domain", "settings"}, f"{module} imports {sorted(own)}"


def test_the_connector_with_default_settings_imports_only_what_they_use() -> None:
    """Idle memory and time to ready (docs/performance.md): what serves metrics, callbacks, the simulator,
    Greengrass, one command or another is imported when it is used, not at every start."""
    program = (
        "import sys; from twilio_connector.cli.main import main; from twilio_connector import service; "
        "from twilio_connector.ops.metrics import Metrics; Metrics(exported=False); "
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout.split()
    )
    heavy = {
        "aiohttp", "prometheus_client", "yarl", "importlib.metadata", "xml.sax", "html.entities", "shtab",
        "tomli_w", "difflib", "twilio_connector.greengrass.session", "twilio_connector.twilio.doctor",
        "twilio_connector.twilio.simulator.app", "twilio_connector.ops.endpoints", "twilio_connector.ops.callbacks",
    }  # fmt: skip
    assert not heavy & loaded, sorted(heavy & loaded)
