"""The web page served by `aidungeon serve`, driven by a real headless Chromium (Playwright, with
Debian's chromium: no browser download) against a real `aidungeon serve` process on a loopback
port, playing the tiny offline model.

What is checked is what a player sees against what the server keeps: after every step the story
on the page must equal GET /api/stories/ID. Skipped, with the reason, when playwright or
chromium is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.serve_process import ServeProcess as Served
from tests.server.serve_process import cli, start_serve

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.server]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = os.environ.get("AIDUNGEON_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("no chromium to drive (apt-get install chromium)", allow_module_level=True)

expect = sync_api.expect
Page = sync_api.Page
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TURN_S = 90_000  # ms: a turn of the tiny model takes well under a second; a loaded 2-core machine is slow


# -- a real server ----------------------------------------------------------------------------


def add_player(home: Path, name: str) -> str:
    """`aidungeon serve users add NAME`; the token is the last word it prints."""
    run = cli(home, "serve", "users", "add", name)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()[-1]


def serve(home: Path, model: Path) -> Served:
    # The tests play faster than a person: the per-player rate limit is not what they test.
    return start_serve(home, model, "--turns-per-minute", "6000")


def client(served: Served, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=served.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def players(
    trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Served, dict[str, str]]]:
    """A server with two players, alice and bob, and their tokens, on the tiny model trained to
    write sentences (the random one writes text the game's guard mostly refuses)."""
    home = tmp_path_factory.mktemp("web-home")
    tokens = {name: add_player(home, name) for name in ("alice", "bob")}
    served = serve(home, trained_model_dir)
    try:
        yield served, tokens
    finally:
        served.stop()


@pytest.fixture(scope="module")
def open_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server with no players (so no sign-in) on the random tiny model, which streams every
    token it is allowed: long turns to stop."""
    served = serve(tmp_path_factory.mktemp("web-open-home"), tiny_model_dir)
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def problems() -> list[str]:
    """Console errors and uncaught exceptions of the pages a test opens (a CSP violation is one)."""
    return []


def open_page(chromium: Any, url: str, problems: list[str], viewport: dict[str, int] = DESKTOP) -> Page:
    context = chromium.new_context(viewport=viewport, accept_downloads=True)
    page = context.new_page()
    page.on("console", lambda message: _note_console(message, problems))
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.goto(url)
    return page


def _note_console(message: Any, problems: list[str]) -> None:
    # Chromium logs every error status as "Failed to load resource"; the tests provoke those
    # (401, 404, 503, dropped connections) on purpose. Anything else logged as an error counts.
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        problems.append(f"console: {message.text}")


# -- what the page shows ----------------------------------------------------------------------


def sign_in(page: Page, token: str) -> None:
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#token", token)
    page.press("#token", "Enter")
    expect(page.locator("#start")).to_be_visible()


def idle(page: Page) -> None:
    """Wait for the turn in progress to end and the story to be re-read from the server."""
    expect(page.locator("#story[aria-busy=false]")).to_be_attached(timeout=TURN_S)
    expect(page.locator("#story .pending")).to_have_count(0)


def send(page: Page, line: str) -> None:
    page.fill("#line", line)
    page.press("#line", "Enter")
    idle(page)


def shown(page: Page) -> list[tuple[str, str]]:
    """The story blocks on the page: (kind, text)."""
    blocks = page.locator("#story > p")
    return [(b.get_attribute("class") or "", b.text_content() or "") for b in blocks.all()]


def kept(served: Served, token: str | None, story_id: str) -> dict[str, Any]:
    with client(served, token) as api:
        response = api.get(f"/api/stories/{story_id}")
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        return detail


def expected_blocks(detail: dict[str, Any]) -> list[tuple[str, str]]:
    """What the page must show for a story: its opening, then every action and result, a result
    that finishes an unfinished sentence joined to it (as the terminal and exporters do)."""
    blocks = [["opening", detail["opening"]]]
    for turn in detail["path"]:
        if turn["action"]:
            blocks.append(["action", turn["action"]])
        if not turn["result"]:
            continue
        last = blocks[-1]
        if not turn["action"] and last[0] != "action" and not re.search(r"[.!?…][\"'’”)\]]*$", last[1].rstrip()):
            rest = turn["result"].lstrip()
            last[1] = last[1] + ("" if rest[:1] in ",.;:!?'’”\")" else " ") + rest
        else:
            blocks.append(["result", turn["result"]])
    return [(kind, text) for kind, text in blocks if text]


def assert_page_shows_the_story(page: Page, served: Served, token: str | None, story_id: str) -> dict[str, Any]:
    detail = kept(served, token, story_id)
    assert shown(page) == expected_blocks(detail)
    return detail


def story_id_of(page: Page) -> str:
    found = re.search(r"#story=([\w-]+)$", page.url)
    assert found, page.url
    return found.group(1)


def start_from_setting(page: Page) -> str:
    page.select_option("#setting", "fantasy")
    page.select_option("#character", "knight")
    page.fill("#player-name", "Aria")
    page.click("#new-form button[type=submit]")
    expect(page.locator("#play")).to_be_visible()
    idle(page)  # a new story plays its first continuation at once
    return story_id_of(page)


def start_custom(page: Page, opening: str) -> str:
    page.click("#custom summary")
    page.fill("#prompt", opening)
    page.click("#custom-form button[type=submit]")
    expect(page.locator("#play")).to_be_visible()
    idle(page)
    return story_id_of(page)


def actions(page: Page) -> list[str]:
    return page.locator("#story > p.action").all_text_contents()


# -- the tests --------------------------------------------------------------------------------


def test_the_page_is_served_with_a_strict_content_security_policy(players: tuple[Served, dict[str, str]]) -> None:
    served, _tokens = players
    with client(served) as api:
        page = api.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
        assert "<script" in page.text and "<script>" not in page.text  # no inline script
        for name in ("app.js", "app.css", "icon.svg"):
            assert api.get(f"/static/{name}").status_code == 200
        assert api.get("/static/web.py").status_code == 404
        assert api.get("/static/..%2Fweb.py").status_code == 404
        assert "/" not in api.get("/openapi.json").json()["paths"]  # the page is not part of the API


def test_a_turn_the_server_finished_but_whose_answer_was_lost_is_shown_once(
    players: tuple[Served, dict[str, str]], chromium: Any, problems: list[str]
) -> None:
    """The server plays the turn and saves it, but the page's connection drops before the answer
    arrives (a replica dying behind a proxy looks the same): the page sends the line again under
    the same Idempotency-Key, and the server answers from what it saved instead of playing again."""
    served, tokens = players
    token = tokens["alice"]
    page = open_page(chromium, served.url, problems)
    sign_in(page, token)
    story_id = start_custom(page, "You stand before a locked iron gate.")
    turns_before = len(kept(served, token, story_id)["path"])
    keys: list[str | None] = []

    def lose_first_answer(route: Any) -> None:
        keys.append(route.request.headers.get("idempotency-key"))
        if len(keys) == 1:
            route.fetch()  # the server plays the whole turn ...
            route.abort("connectionreset")  # ... and its answer never arrives
        else:
            route.fallback()

    page.route("**/api/stories/*/turns", lose_first_answer)
    for _ in range(4):  # as in play(): a turn the tiny model stalls on is taken back; send again
        keys.clear()
        send(page, "knock on the gate")
        assert len(keys) == 2 and keys[0] and keys[0] == keys[1]
        if actions(page)[-1:] == ["You knock on the gate."]:
            break
    page.unroute("**/api/stories/*/turns")
    detail = assert_page_shows_the_story(page, served, token, story_id)
    assert len(detail["path"]) == turns_before + 1  # played once, not twice
    assert actions(page).count("You knock on the gate.") == 1
    assert problems == []


def play(page: Page, line: str, action: str) -> None:
    """Send a line until the story keeps its action: a turn whose every try gives no usable text
    (rare with the trained tiny model) is taken back by the game, and a player sends it again."""
    for _ in range(4):
        send(page, line)
        if actions(page)[-1:] == [action]:
            return
        expect(page.locator("#messages")).to_contain_text("stalled")
    pytest.fail(f"the story never kept {action!r}")


def test_sign_in_play_retry_undo_reload_and_continue(
    players: tuple[Served, dict[str, str]], chromium: Any, problems: list[str]
) -> None:
    served, tokens = players
    token = tokens["alice"]
    page = open_page(chromium, served.url, problems)
    sign_in(page, token)
    story_id = start_from_setting(page)
    detail = assert_page_shows_the_story(page, served, token, story_id)
    assert "Aria" in detail["opening"] and shown(page)[0][0] == "opening"

    # Three turns, one in each input mode (the last one chosen from the keyboard).
    play(page, "look around", "You look around.")
    # Screen readers hear the action and the story text as they arrive, through a live region.
    announced = page.locator("#announce[aria-live=polite]")
    expect(announced).to_contain_text("You: You look around.")
    last_result = kept(served, token, story_id)["path"][-1]["result"]
    assert last_result.split("\n")[-1].strip() in (announced.text_content() or "")
    page.check("input[name=mode][value=say]")
    play(page, "hello there", 'You say "Hello there."')
    page.keyboard.press("Alt+3")
    play(page, "A troll sleeps here.", "A troll sleeps here.")
    page.keyboard.press("Alt+1")
    assert actions(page) == ["You look around.", 'You say "Hello there."', "A troll sleeps here."]
    assert len(assert_page_shows_the_story(page, served, token, story_id)["path"]) >= 3

    # Retry: another take of the last result, in place (no turn is added).
    page.click("#toolbar >> text=Retry")
    idle(page)
    assert actions(page) == ["You look around.", 'You say "Hello there."', "A troll sleeps here."]
    assert_page_shows_the_story(page, served, token, story_id)

    # Undo: the last turn goes.
    page.click("#toolbar >> text=Undo")
    idle(page)
    assert actions(page) == ["You look around.", 'You say "Hello there."']
    expect(page.locator("#messages")).to_contain_text("Undone: A troll sleeps here.")
    assert_page_shows_the_story(page, served, token, story_id)

    # Reload: the page comes back to the story, as the server keeps it, and play goes on.
    page.reload()
    expect(page.locator("#play")).to_be_visible()
    assert_page_shows_the_story(page, served, token, story_id)
    play(page, "walk to the gate", "You walk to the gate.")
    assert_page_shows_the_story(page, served, token, story_id)

    # Alter: edit the last result in place.
    page.click("#toolbar >> text=Alter")
    expect(page.locator("#story #edit-form")).to_be_visible()  # in place of the last result
    expect(page.locator("#story > p[hidden]")).to_have_count(1)
    assert page.input_value("#edit-text") == kept(served, token, story_id)["path"][-1]["result"]
    page.fill("#edit-text", "The gate creaks open.")
    page.click("#edit-form button[type=submit]")
    idle(page)
    assert shown(page)[-1] == ("result", "The gate creaks open.")
    assert_page_shows_the_story(page, served, token, story_id)

    # Memory is one click, a slash command works as typed; export downloads the server's Markdown.
    page.click("#toolbar >> text=Memory")
    idle(page)
    expect(page.locator("#messages caption")).to_have_text("Memory")
    send(page, "/remember The gate is guarded.")
    page.click("#toolbar >> text=Memory")
    idle(page)
    expect(page.locator("#messages table")).to_contain_text("The gate is guarded.")
    with page.expect_download() as download:
        page.click("#toolbar >> text=Export .md")
    markdown = Path(download.value.path()).read_text(encoding="utf-8")
    assert "The gate creaks open." in markdown and "walk to the gate" in markdown
    assert problems == []


def test_stop_ends_a_turn_mid_stream(open_server: Served, chromium: Any, problems: list[str]) -> None:
    """Stop (here the Esc key) hangs up; the server cancels the turn at once and keeps the action
    with no result, and the page shows exactly that, also after a reload."""
    page = open_page(chromium, open_server.url, problems)
    story_id = start_custom(page, "You stand at a gate.")
    send(page, "/set max_new_tokens 700")  # the random tiny model writes all of them: long turns
    expect(page.locator("#messages")).to_contain_text("max_new_tokens = 700")
    page.fill("#line", "open the door")
    page.press("#line", "Enter")
    expect(page.locator("#story p.streaming")).not_to_be_empty(timeout=TURN_S)
    expect(page.locator("#stop")).to_be_enabled()
    page.keyboard.press("Escape")
    idle(page)
    expect(page.locator("#messages")).to_contain_text("Stopped")
    with client(open_server) as api:
        deadline = time.monotonic() + 30
        while api.get("/api/health").json()["turns"] and time.monotonic() < deadline:
            time.sleep(0.1)
    detail = assert_page_shows_the_story(page, open_server, None, story_id)
    assert detail["path"][-1] == {"action": "You open the door.", "result": ""}
    assert shown(page)[-1] == ("action", "You open the door.")
    page.reload()
    expect(page.locator("#play")).to_be_visible()
    assert_page_shows_the_story(page, open_server, None, story_id)
    assert problems == []


def test_story_text_is_text_never_markup(
    players: tuple[Served, dict[str, str]], chromium: Any, problems: list[str]
) -> None:
    served, tokens = players
    page = open_page(chromium, served.url, problems)
    sign_in(page, tokens["alice"])
    opening = 'You find a note: <img src=x id=injected> <b>bold</b> & "quotes".'
    start_custom(page, opening)
    assert shown(page)[0] == ("opening", opening)
    assert page.locator("#story img, #story b, #injected").count() == 0
    assert problems == []


def test_two_players_cannot_see_each_others_stories(
    players: tuple[Served, dict[str, str]], chromium: Any, problems: list[str]
) -> None:
    served, tokens = players
    alice = open_page(chromium, served.url, problems)
    sign_in(alice, tokens["alice"])
    secret = start_custom(alice, "Alice hides the silver key under the third stone.")
    bob = open_page(chromium, served.url, problems)
    sign_in(bob, tokens["bob"])
    expect(bob.locator("#stories")).not_to_contain_text("silver key")
    assert secret not in (bob.locator("#stories").inner_html())
    # Bob follows a link to Alice's story: it is not found for him, and nothing of it shows.
    bob.goto(f"{served.url}/#story={secret}")
    expect(bob.locator("#notice")).to_contain_text("gone or is not yours")
    expect(bob.locator("#start")).to_be_visible()
    assert "silver key" not in (bob.locator("body").text_content() or "")
    # Alice's page, in its own browser context, still has it.
    alice.goto(served.url)
    expect(alice.locator("#stories")).to_contain_text("Custom")
    assert problems == []


def test_a_wrong_token_asks_again_and_sign_out_forgets_it(
    players: tuple[Served, dict[str, str]], chromium: Any, problems: list[str]
) -> None:
    served, tokens = players
    page = open_page(chromium, served.url, problems)
    page.fill("#token", "not-a-token")
    page.press("#token", "Enter")
    expect(page.locator("#signin-error")).to_contain_text("not accepted")
    sign_in(page, tokens["bob"])
    page.reload()
    expect(page.locator("#start")).to_be_visible()  # the token is kept across loads
    page.click("#sign-out")
    expect(page.locator("#signin")).to_be_visible()
    page.reload()
    expect(page.locator("#signin")).to_be_visible()


def test_a_busy_server_and_a_dropped_connection_are_retried(
    players: tuple[Served, dict[str, str]], chromium: Any, problems: list[str]
) -> None:
    served, tokens = players
    token = tokens["bob"]
    page = open_page(chromium, served.url, problems)
    sign_in(page, token)
    story_id = start_custom(page, "You stand at the edge of a frozen lake.")

    # The turn is refused once as busy (503 with Retry-After): the page says so and tries again.
    refusals: list[str] = []

    def busy_once(route: Any) -> None:
        if refusals:
            route.fallback()
            return
        refusals.append(route.request.url)
        route.fulfill(status=503, headers={"Retry-After": "1"}, json={"detail": "the server is busy; please try again"})

    page.route("**/api/stories/*/turns", busy_once)
    page.fill("#line", "cross the ice")
    page.press("#line", "Enter")
    expect(page.locator("#notice")).to_contain_text("busy")
    idle(page)
    page.unroute("**/api/stories/*/turns")
    assert len(refusals) == 1
    assert_page_shows_the_story(page, served, token, story_id)
    before = shown(page)

    # The connection drops on the next turn, and on the first re-read of the story too: the page
    # says so, keeps the story, reconnects, and puts the unplayed line back in the input.
    dropped: list[str] = []

    def drop_turn(route: Any) -> None:
        dropped.append("turn")
        route.abort("connectionreset")

    def drop_once(route: Any) -> None:
        if route.request.method == "GET" and "read" not in dropped:
            dropped.append("read")
            route.abort("connectionreset")
        else:
            route.fallback()

    page.route(f"**/api/stories/{story_id}", drop_once)
    page.route("**/api/stories/*/turns", drop_turn)
    page.fill("#line", "listen")
    page.press("#line", "Enter")
    expect(page.locator("#notice")).to_contain_text("connection")
    idle(page)
    page.unroute("**/api/stories/*/turns")
    page.unroute(f"**/api/stories/{story_id}")
    assert dropped == ["turn"] * 4 + ["read"]  # sent 4 times under its key, then given back
    assert shown(page) == before
    assert page.input_value("#line") == "listen"
    play(page, "listen", "You listen.")
    assert_page_shows_the_story(page, served, token, story_id)
    assert problems == []


def test_without_players_there_is_no_sign_in(open_server: Served, chromium: Any, problems: list[str]) -> None:
    page = open_page(chromium, open_server.url, problems)
    expect(page.locator("#start")).to_be_visible()
    expect(page.locator("#signin")).to_be_hidden()
    expect(page.locator("#sign-out")).to_be_hidden()
    story_id = start_from_setting(page)
    send(page, "look around")
    assert_page_shows_the_story(page, open_server, None, story_id)
    assert problems == []


def focus_by_tab(page: Page, wanted: str, key: str = "Tab", limit: int = 30) -> None:
    """Press Tab (or Shift+Tab) until the element matching `wanted` has the focus."""
    for _ in range(limit):
        if page.locator(f"{wanted}:focus").count():
            return
        page.keyboard.press(key)
    pytest.fail(f"{key} never reached {wanted}")


def test_keyboard_only_play(open_server: Served, chromium: Any, problems: list[str]) -> None:
    page = open_page(chromium, open_server.url, problems)
    expect(page.locator("#start")).to_be_visible()
    focus_by_tab(page, "#player-name")
    page.keyboard.type("Kay")
    page.keyboard.press("Enter")
    expect(page.locator("#play")).to_be_visible()
    idle(page)
    expect(page.locator("#line")).to_be_focused()  # ready to type after every turn
    page.keyboard.type("look around")
    page.keyboard.press("Enter")
    idle(page)
    expect(page.locator("#line")).to_be_focused()
    focus_by_tab(page, "#toolbar button:has-text('Help')", key="Shift+Tab")
    page.keyboard.press("Enter")
    idle(page)
    expect(page.locator("#messages caption")).to_have_text("Commands")
    assert problems == []


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_start_screen_and_a_story_fit_the_screen(
    size: str, players: tuple[Served, dict[str, str]], chromium: Any, problems: list[str], tmp_path: Path
) -> None:
    """No sideways scrolling at desktop or phone size; screenshots go to AIDUNGEON_SCREENSHOTS when set."""
    served, tokens = players
    page = open_page(chromium, served.url, problems, DESKTOP if size == "desktop" else PHONE)
    sign_in(page, tokens["alice"])
    shots = Path(os.environ.get("AIDUNGEON_SCREENSHOTS") or tmp_path)
    _assert_fits(page)
    page.screenshot(path=str(shots / f"web-start-{size}.png"))
    start_from_setting(page)
    send(page, "look around")
    send(page, "say who goes there")
    _assert_fits(page)
    expect(page.locator("#line")).to_be_in_viewport()
    page.screenshot(path=str(shots / f"web-story-{size}.png"))
    assert problems == []


def _assert_fits(page: Page) -> None:
    width, scroll_width = page.evaluate("() => [innerWidth, document.scrollingElement.scrollWidth]")
    assert scroll_width <= width, f"the page scrolls sideways: {scroll_width} > {width}"
