"""The documentation: docs/parameters.md is what docs/gen_parameters.py renders from RunParams now, and every
relative link in the README, the changelog and docs/ leads to a file (and heading) that exists. Cheap: no torch."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCS = PROJECT_ROOT / "docs"
PAGES = [PROJECT_ROOT / "README.md", PROJECT_ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def generator():  # the generator script as a module (docs/ is not a package)
    spec = importlib.util.spec_from_file_location("gen_parameters", DOCS / "gen_parameters.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameters_page_is_generated_from_run_params() -> None:
    page = (DOCS / "parameters.md").read_text()
    assert page == generator().render(), "docs/parameters.md is stale: run `python docs/gen_parameters.py`"


def test_parameters_page_lists_every_field_and_flag() -> None:
    from mnist_core.config import RunParams

    page = (DOCS / "parameters.md").read_text()
    for name in RunParams.model_fields:
        assert f"| `{name}` | `--{name.replace('_', '-')}" in page, name


def test_the_check_mode_fails_on_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = generator()
    monkeypatch.setattr(module, "PAGE", tmp_path / "parameters.md")
    (tmp_path / "parameters.md").write_text("old\n")
    assert module.main(["--check"]) == 1
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not hyphens), spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)  # nor do code spans
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_slug_matches_github() -> None:
    assert slug("Champion / challenger") == "champion--challenger"
    assert (
        slug("Batch inference as a deployment: `mnist-predict/batch`")
        == "batch-inference-as-a-deployment-mnist-predictbatch"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(PROJECT_ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, "\n".join(broken)


def test_the_index_lists_every_docs_page() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    for page in DOCS.glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"docs/{page.name} is not in the README's index"


def test_readme_fits_a_screen() -> None:
    assert len((PROJECT_ROOT / "README.md").read_text().splitlines()) <= 150


def test_generator_runs_as_a_script() -> None:
    result = subprocess.run([sys.executable, str(DOCS / "gen_parameters.py"), "--check"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr


# The folders of the project that hold code, and where they are described.
DESCRIBED_FOLDERS = ("mnist_core", "tasks", "flows", "deployments", "launch", "reporting", "benchmarks", "tests")


def code_folders() -> list[str]:
    """Every folder under DESCRIBED_FOLDERS that holds Python files (or prefect.yaml), as `path/`."""
    found = set()
    for top in DESCRIBED_FOLDERS:
        for path in [*(PROJECT_ROOT / top).rglob("*.py"), *(PROJECT_ROOT / top).rglob("prefect.yaml")]:
            folder = path.parent.relative_to(PROJECT_ROOT)
            if "__pycache__" not in folder.parts and "results" not in folder.parts:
                found.add(f"{folder.as_posix()}/")
    return sorted(found)


def test_the_development_page_describes_every_code_folder() -> None:
    """docs/development.md's layout tables name every package folder as `path/`: a folder added without a line
    there fails here."""
    page = (DOCS / "development.md").read_text()
    missing = [folder for folder in code_folders() if f"`{folder}`" not in page]
    assert not missing, f"docs/development.md's layout does not describe {missing}"
