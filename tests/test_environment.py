"""The environment the README's commands build is the one the project pins."""

import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from workbench import doctor

REPO = Path(__file__).resolve().parents[1]


def pins(lines):
    out = {}
    for line in lines:
        spec = line.split("#", 1)[0].strip()
        if spec:
            name, version = spec.split("==")
            out[name.lower().replace("_", "-")] = version
    return out


def test_environment_yml_pins_exactly_what_requirements_txt_pins():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    requirements = pins((REPO / "requirements.txt").read_text().splitlines())
    assert pins(pip_section) == requirements
    assert requirements["torch"] == "2.13.0"


def test_no_forbidden_package_is_named_anywhere():
    for name in (
        "requirements.txt",
        "requirements-nodeps.txt",
        "environment.yml",
        "pyproject.toml",
    ):
        text = (REPO / name).read_text().lower()
        for line in text.splitlines():
            code = line.split("#", 1)[0]
            for bad in doctor.FORBIDDEN:
                assert bad not in code.replace("-", "_").split("=")[0].split(), (name, line)


def test_constraints_agree_with_direct_pins():
    constraints = pins(
        line for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line
    )
    for name, version in pins((REPO / "requirements.txt").read_text().splitlines()).items():
        assert constraints.get(name) == version, name


def test_installed_environment_passes_the_doctor():
    assert doctor.checks() == []


@pytest.mark.browser
def test_debian_chromium_renders_a_local_page_through_playwright(tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (make setup installs it when run as root)")
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "page.html"
    page_file.write_text("<html><body><h1 id='t'>workbench</h1></body></html>")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(),
            executable_path=shutil.which("chromium"),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = ctx.new_page()
            page.goto(page_file.as_uri())
            assert page.inner_text("#t") == "workbench"
        finally:
            ctx.close()
