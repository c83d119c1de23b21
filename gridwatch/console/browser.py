"""Driving the console in Debian's headless chromium with Playwright (tests, screenshots, the bench).

Not used by the service. `launch()` starts `/usr/bin/chromium` (never a downloaded browser);
`login()` logs in through the real form (there is no test-only log-in path); `watch_rows()`
installs a MutationObserver that records, for every element with a `data-id` that enters the
DOM, the wall-clock time (`performance.timeOrigin + performance.now()`, sub-millisecond, the same
clock as Python's `time.time()`) when it first appeared.
"""

from __future__ import annotations

from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1920, "height": 1080}


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def login(page: Any, base: str, name: str, password: str, *, lang: str | None = None) -> None:
    """Log in through the form at `{base}/login` (base ends in the console's prefix)."""
    page.goto(f"{base}/login" + (f"?lang={lang}" if lang else ""))
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("main.login button[type=submit]")
    if "/login" in page.url:
        raise RuntimeError(f"log-in as {name!r} failed: {page.inner_text('main')[:200]}")


WATCH_JS = """(selector) => {
  window.__seen = window.__seen || {};
  const now = () => performance.timeOrigin + performance.now();
  const note = (n) => {
    if (!(n instanceof Element)) return;
    const hits = n.matches(selector) ? [n] : [];
    hits.push(...n.querySelectorAll(selector));
    for (const h of hits) { const id = h.dataset.id; if (id && !(id in window.__seen)) window.__seen[id] = now(); }
  };
  document.querySelectorAll(selector).forEach(note);
  new MutationObserver((muts) => { for (const m of muts) m.addedNodes.forEach(note); })
    .observe(document.body, { childList: true, subtree: true });
  return true;
}"""


def watch_rows(page: Any, selector: str = "[data-id]") -> None:
    """Record when each `selector` element (by its data-id) first enters the page's DOM."""
    page.evaluate(WATCH_JS, selector)


def seen_at(page: Any, incident_id: str) -> float | None:
    """Epoch seconds when the row of `incident_id` appeared, or None (not yet)."""
    v = page.evaluate("(id) => (window.__seen || {})[id] ?? null", incident_id)
    return None if v is None else float(v) / 1000.0
