"""A headless Chromium (Debian's `chromium`, driven by Playwright from the Python registry) for
the web console's tests, and what they share: console accounts in a config file, sign-in,
screenshots.

Screenshots go to target/console-screenshots/ (not committed), one per page a test reaches, so
that a reviewer can look at them after a run.
"""
from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
from pathlib import Path

import helpers

SCREENSHOTS = Path(__file__).resolve().parent.parent / "target" / "console-screenshots"
ADMIN, ADMIN_PW = "ops", "console-secret"
VIEWER, VIEWER_PW = "watcher", "viewer-secret"
PAGE_DEADLINE_MS = 15_000


def console_config(path: Path) -> dict:
    """Writes `[[console-user]]` tables (made by `zocalo console user`, as a user would) and
    two API tokens; returns the tokens."""
    zocalo = str(helpers.zocalo_bin())
    tables = []
    for name, password, role in ((ADMIN, ADMIN_PW, "admin"), (VIEWER, VIEWER_PW, "view")):
        out = subprocess.run([zocalo, "console", "user", name, "--role", role],
                             input=password + "\n", capture_output=True, text=True, check=True,
                             timeout=60)
        tables.append(out.stdout)
    made = subprocess.run([zocalo, "console", "token", "robot", "--role", "admin"],
                          capture_output=True, text=True, check=True, timeout=60)
    admin_token = made.stderr.strip().rsplit(" ", 1)[-1]
    assert hashlib.sha256(admin_token.encode()).hexdigest() in made.stdout, made
    tables.append(made.stdout)
    view_token = secrets.token_hex(32)
    tables.append("[[console-token]]\nname = \"reader\"\nsha256 = \"%s\"\nrole = \"view\"\n"
                  % hashlib.sha256(view_token.encode()).hexdigest())
    path.write_text("\n".join(tables))
    return {"admin": admin_token, "view": view_token}


def launch_browser(playwright):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed (scripts/test.sh installs it)"
    # As root, Chromium's own sandbox cannot start: the test machine is the sandbox.
    return playwright.chromium.launch(executable_path=chromium,
                                      args=["--no-sandbox", "--disable-gpu"])


def sign_in(page, base: str, name: str, password: str) -> None:
    page.goto(base + "/")
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("#submit")
    page.wait_for_selector("#nodes .node", timeout=PAGE_DEADLINE_MS)


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
