"""The sidebar reads "Home" first however a visitor arrives, even on a fresh server's very first request.

Streamlit runs a pages/ script opened by its URL on its own, with an automatic sidebar whose first entry
is "app", until app.py's st.navigation has run once in the process: the pages make their first run go
through app.py (ui.state). This needs a server no other test has used, so it starts its own.
"""

from __future__ import annotations

import re

from browser import TIMEOUT_MS, VIEWPORT, start_streamlit, wait_for_script_idle
from playwright.sync_api import expect


def test_a_page_opened_first_on_a_fresh_server_has_the_apps_navigation(browser):
    server = start_streamlit("app.py")
    try:
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.goto(f"{server.url}/Architecture")
        wait_for_script_idle(page)
        links = page.locator('[data-testid="stSidebarNav"] a')
        # (a link's text starts with its Material icon's name, e.g. "draw")
        expect(links.first).to_have_text(re.compile(r"Home$"), timeout=TIMEOUT_MS)  # after the run through app.py
        wait_for_script_idle(page)
        names = [links.nth(i).inner_text().strip() for i in range(links.count())]
        assert names[0].endswith("Home"), names
        assert not [n for n in names if n.endswith("app")], names
        assert page.locator("h1").first.inner_text().startswith("Architecture")
        context.close()
    finally:
        server.stop()
