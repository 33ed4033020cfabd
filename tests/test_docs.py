"""The documentation site builds with MkDocs in strict mode (a broken link or a missing page fails it), its
configuration reference lists every setting as the code has it, and the README's links lead somewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from prometheus_client import generate_latest

from twilio_connector.ops.metrics import Metrics
from twilio_connector.settings.reference import settings_reference
from twilio_connector.settings.schema import OPTIONS

ROOT = Path(__file__).parent.parent


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reference = (site / "reference" / "index.html").read_text()
    assert all(f"<code>{name}</code>" in reference for name in OPTIONS)
    assert "0.1.0" in (site / "changelog" / "index.html").read_text()  # the changelog is included, not copied


def test_the_reference_page_is_the_code_s() -> None:
    page = (ROOT / "docs" / "reference.md").read_text()
    assert page == settings_reference(), "regenerate: python -m twilio_connector.settings.reference > docs/reference.md"


def test_the_reference_names_every_flag_and_alias() -> None:
    page = settings_reference()
    for name, option in OPTIONS.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        assert all(f"`{alias}`" in row for alias in option.aliases)
        assert (f"`{option.flag}`" in row) == bool(option.flag)


def test_readme_links_lead_to_pages_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)", readme)
    assert targets, "the README links to the documentation"
    for target in targets:
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_every_metric_is_documented_in_operations_md() -> None:
    """The metrics table in docs/operations.md names exactly the metrics the connector exports."""
    text = generate_latest(Metrics().registry).decode()
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    table = (ROOT / "docs" / "operations.md").read_text()
    assert set(re.findall(r"^\| `(twilio_connector_[a-z_]+)", table, re.M)) == exported
