// aidungeon's web page: plays through the game API (/api/...) exactly as any other client does.
//
// One screen at a time: sign-in (only when the server has players), the start screen (new story,
// your stories) and the story (#story=ID, so a reload comes back to it). A turn is a POST whose
// answer is Server-Sent Events, read with fetch() and a stream reader (EventSource cannot POST).
// The story shown is always the server's: after every turn, and after a dropped connection, the
// page re-reads GET /api/stories/ID; until that succeeds, what was streamed stays on the page.
// Every text from the server or the player goes in with textContent, never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "aidungeon.token";
  const MAX_TRIES = 8; // for requests that are safe to repeat: GETs, and turns the server refused
  const RESEND_TRIES = 4; // a turn sent again under its key after its connection dropped
  const ENDS_SENTENCE = /[.!?…]["'’”)\]]*$/;
  const TABLE_HINTS = {
    Memory: "Add with /remember TEXT, change with /memory N TEXT, remove with /forget N.",
    "World info": "Add with /world add KEY, KEY: TEXT (key * = always), /world edit N …, /world remove N.",
  };

  const $ = (id) => document.getElementById(id);
  // Kept by reference: while editing in place, the form stands inside the story, which re-renders.
  const editForm = $("edit-form");
  const state = {
    token: localStorage.getItem(TOKEN_KEY) || "",
    storyId: null,
    busy: false,
    controller: null,
    history: [],
    historyAt: 0,
    editPrefix: "",
    settings: [],
    turns: 0, // the shown story's turn count and last change, as the server last said
    updatedAt: "",
  };

  class ApiError extends Error {
    constructor(status, detail, retryAfter) {
      super(detail);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  // -- small helpers -------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function notice(text, kind) {
    const box = $("notice");
    box.textContent = text || "";
    box.className = kind || "";
    box.hidden = !text;
  }

  function announce(text) {
    if (!text.trim()) return;
    const log = $("announce");
    log.append(el("p", "", text));
    while (log.childElementCount > 20) log.firstElementChild.remove();
  }

  function isFragment(text) {
    const trimmed = text.trimEnd();
    return trimmed !== "" && !ENDS_SENTENCE.test(trimmed);
  }

  function joinContinuation(start, continuation) {
    if (!start) return continuation;
    const rest = continuation.trimStart();
    return start + (/^[,.;:!?'’”")]/.test(rest) ? "" : " ") + rest;
  }

  // -- the API -------------------------------------------------------------------------------

  function headers(json, extra) {
    const h = Object.assign({}, extra);
    if (state.token) h.Authorization = "Bearer " + state.token;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function failure(response) {
    let detail = `the server answered ${response.status}`;
    try {
      const body = await response.json();
      if (typeof body.detail === "string") detail = body.detail;
      else if (body.detail) detail = JSON.stringify(body.detail);
    } catch (_) {
      // not JSON: keep the status line
    }
    const retryAfter = Number(response.headers.get("Retry-After")) || 2;
    return new ApiError(response.status, detail, retryAfter);
  }

  // One request; ApiError for an error status, TypeError (from fetch) when the connection fails.
  async function request(path, options) {
    const opts = options || {};
    const response = await fetch(path, {
      method: opts.method || "GET",
      headers: headers(opts.body !== undefined, opts.headers),
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      signal: opts.signal,
      cache: "no-store",
    });
    if (!response.ok) throw await failure(response);
    return response;
  }

  function retryable(err) {
    return !(err instanceof ApiError) || err.status === 503 || err.status === 429;
  }

  // A request that is safe to repeat: busy answers and dropped connections are retried, with a notice.
  async function patiently(path, options) {
    for (let attempt = 1; ; attempt++) {
      try {
        const response = await request(path, options);
        if (attempt > 1) notice("");
        return response;
      } catch (err) {
        if (!retryable(err) || attempt >= MAX_TRIES) throw err;
        const wait = waitFor(err, attempt);
        notice(`${why(err)} Trying again in ${Math.round(wait / 1000)} s…`, "warn");
        await sleep(wait);
      }
    }
  }

  function waitFor(err, attempt) {
    if (err instanceof ApiError) return Math.min(30, err.retryAfter) * 1000;
    return Math.min(10000, 500 * 2 ** attempt);
  }

  function why(err) {
    if (err instanceof ApiError && err.status === 503) return "The server is busy.";
    if (err instanceof ApiError && err.status === 429) return "Too many turns at once.";
    if (err instanceof ApiError && err.status === 409) return "A turn of this story is still running.";
    return "The connection to the server dropped.";
  }

  const getJson = async (path) => (await patiently(path)).json();

  // -- screens -------------------------------------------------------------------------------

  function show(screen) {
    for (const id of ["loading", "signin", "start", "play"]) $(id).hidden = id !== screen;
    $("to-stories").hidden = screen !== "play";
    $("sign-out").hidden = !state.token || screen === "signin";
  }

  // Any failure that reaches the top: 401 asks for a token, 404 goes back to the story list.
  function fail(err) {
    if (err instanceof ApiError && err.status === 401) {
      showSignin(state.token ? "That token was not accepted: " + err.message : "");
    } else if (err instanceof ApiError && err.status === 404) {
      notice("That story is gone or is not yours.", "error");
      location.hash = "";
    } else {
      notice(err instanceof ApiError ? err.message : "Cannot reach the server: " + err.message, "error");
    }
  }

  async function route() {
    const match = /^#story=([\w-]+)$/.exec(location.hash);
    try {
      if (match) await openStory(match[1]);
      else await openStart();
    } catch (err) {
      fail(err);
    }
  }

  function showSignin(message) {
    show("signin");
    $("signin-error").textContent = message || "";
    $("token").focus();
  }

  function signIn(event) {
    event.preventDefault();
    state.token = $("token").value.trim();
    $("token").value = "";
    localStorage.setItem(TOKEN_KEY, state.token);
    notice("");
    route();
  }

  function signOut() {
    stop();
    state.token = "";
    state.storyId = null;
    localStorage.removeItem(TOKEN_KEY);
    history.replaceState(null, "", location.pathname); // the next player starts at the story list
    showSignin("");
  }

  // -- the start screen ----------------------------------------------------------------------

  async function openStart() {
    state.storyId = null;
    const stories = await getJson("/api/stories"); // 401 here means: sign in
    state.settings = await getJson("/api/settings");
    fillSettings();
    listStories(stories);
    show("start");
    document.title = "aidungeon";
  }

  function fillSettings() {
    const select = $("setting");
    const chosen = select.value;
    select.replaceChildren(...state.settings.map((s) => option(s.id, s.title)));
    if (chosen) select.value = chosen;
    fillCharacters();
  }

  function option(value, label) {
    const node = el("option", "", label);
    node.value = value;
    return node;
  }

  function fillCharacters() {
    const setting = state.settings.find((s) => s.id === $("setting").value);
    $("setting-description").textContent = setting ? setting.description : "";
    const characters = setting ? setting.characters : [];
    $("character").replaceChildren(...characters.map((c) => option(c, c)));
  }

  function listStories(stories) {
    const list = $("stories");
    list.replaceChildren(...stories.map(storyItem));
    $("no-stories").hidden = stories.length > 0;
  }

  function storyItem(story) {
    const item = el("li", "story-item");
    const link = el("a", "", story.title || "Untitled");
    link.href = "#story=" + story.id;
    const when = new Date(story.updated_at + (story.updated_at.endsWith("Z") ? "" : "Z"));
    const turns = story.turns === 1 ? "1 turn" : `${story.turns} turns`;
    const meta = el("span", "hint", `${turns} · ${when.toLocaleString()}`);
    const actions = el("span", "row");
    actions.append(
      button("Markdown", () => exportStory(story.id, "md"), `Download ${story.title} as Markdown`),
      button("HTML", () => exportStory(story.id, "html"), `Download ${story.title} as a web page`),
      button("Delete", () => deleteStory(story), `Delete ${story.title}`),
    );
    item.append(link, meta, actions);
    return item;
  }

  function button(label, onClick, ariaLabel) {
    const node = el("button", "", label);
    node.type = "button";
    if (ariaLabel) node.setAttribute("aria-label", ariaLabel);
    node.addEventListener("click", onClick);
    return node;
  }

  async function deleteStory(story) {
    if (!confirm(`Delete "${story.title}"? This cannot be undone.`)) return;
    try {
      await request("/api/stories/" + encodeURIComponent(story.id), { method: "DELETE" });
      await openStart();
    } catch (err) {
      fail(err);
    }
  }

  async function startStory(body) {
    try {
      const response = await request("/api/stories", { method: "POST", body });
      const created = await response.json();
      location.hash = "story=" + created.id; // route() opens it and plays its first turn
    } catch (err) {
      fail(err);
    }
  }

  function startFromSetting(event) {
    event.preventDefault();
    const name = $("player-name").value.trim();
    startStory({ setting: $("setting").value, character: $("character").value, name });
  }

  function startCustom(event) {
    event.preventDefault();
    startStory({ prompt: $("prompt").value });
  }

  async function exportStory(id, format) {
    try {
      const response = await patiently(`/api/stories/${encodeURIComponent(id)}/export?format=${format}`);
      const url = URL.createObjectURL(await response.blob());
      const link = el("a");
      link.href = url;
      link.download = `story-${id}.${format}`;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      fail(err);
    }
  }

  // -- the story -----------------------------------------------------------------------------

  async function openStory(id) {
    const fresh = state.storyId !== id;
    state.storyId = id;
    const detail = await getJson("/api/stories/" + encodeURIComponent(id));
    if (fresh) {
      $("messages").replaceChildren();
      closeEdit();
    }
    renderStory(detail);
    show("play");
    $("line").focus();
    if (detail.path.length === 0) await playTurn(""); // a new story: its first continuation
  }

  // The story as the server keeps it: the opening, then each turn's action and result.
  function renderStory(detail) {
    document.title = `${detail.title} · aidungeon`;
    $("story-title").textContent = detail.title;
    state.turns = detail.turns;
    state.updatedAt = detail.updated_at;
    const blocks = [{ kind: "opening", text: detail.opening }];
    for (const turn of detail.path) {
      if (turn.action) blocks.push({ kind: "action", text: turn.action });
      const last = blocks[blocks.length - 1];
      if (!turn.result) continue;
      if (!turn.action && last.kind !== "action" && isFragment(last.text)) {
        last.text = joinContinuation(last.text, turn.result); // the result finishes an unfinished sentence
      } else {
        blocks.push({ kind: "result", text: turn.result });
      }
    }
    const editing = !editForm.hidden;
    $("story").replaceChildren(...blocks.filter((b) => b.text).map((b) => el("p", b.kind, b.text)));
    if (editing) placeEdit();
    scrollDown();
  }

  // Follow the story as it grows, unless the player has scrolled up to read.
  function scrollDown() {
    const root = document.scrollingElement || document.documentElement;
    const fromBottom = root.scrollHeight - root.scrollTop - root.clientHeight;
    if (fromBottom < 400 || !state.busy) root.scrollTop = root.scrollHeight;
  }

  // Re-read the story until it works: on a dropped connection nothing on the page is lost meanwhile.
  async function resync() {
    for (let attempt = 1; ; attempt++) {
      try {
        const response = await request("/api/stories/" + encodeURIComponent(state.storyId));
        const detail = await response.json();
        notice("");
        renderStory(detail);
        return detail;
      } catch (err) {
        if (!retryable(err)) throw err;
        const wait = Math.min(15000, 1000 * attempt);
        notice(`The connection to the server dropped; the story stays here. Reconnecting in ${wait / 1000} s…`, "warn");
        await sleep(wait);
      }
    }
  }

  // A turn cut short (stopped, or its connection dropped) still ends on the server, which then
  // saves what it kept (the action, without a result): wait a little for that save to show.
  async function settled(updatedBefore) {
    let detail = await resync();
    for (let tries = 0; tries < 40 && detail.updated_at === updatedBefore; tries++) {
      await sleep(250);
      detail = await resync();
    }
    return detail;
  }

  // -- a turn --------------------------------------------------------------------------------

  function compose(text, mode) {
    const line = text.trim();
    if (!line || line.startsWith("/")) return line; // continue, or a command whatever the mode
    if (mode === "say") return /^(say\b|["“])/i.test(line) ? line : "say " + line;
    if (mode === "story") return line.startsWith("!") ? line : "!" + line;
    return line;
  }

  function currentMode() {
    return document.querySelector('input[name="mode"]:checked').value;
  }

  function submitLine(event) {
    event.preventDefault();
    if (state.busy) {
      notice("A turn is still running: wait for it, or Stop it (Esc).", "warn");
      return;
    }
    const typed = $("line").value;
    const line = compose(typed, currentMode());
    if (typed.trim()) {
      state.history.push(typed);
      state.historyAt = state.history.length;
    }
    $("line").value = "";
    playTurn(line, typed);
  }

  function setBusy(busy) {
    state.busy = busy;
    $("stop").disabled = !busy;
    $("send").disabled = busy;
    for (const node of $("toolbar").querySelectorAll("button")) node.disabled = busy;
    $("story").setAttribute("aria-busy", String(busy));
  }

  // Play one line; the story is re-read from the server when the turn ends, however it ends.
  async function playTurn(line, typed) {
    if (state.busy) return;
    const storyId = state.storyId;
    setBusy(true);
    notice("");
    $("messages").replaceChildren();
    const stream = new Stream(line);
    const controller = new AbortController();
    state.controller = controller;
    const key = turnKey();
    let outcome = "done";
    let started = false;
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          const response = await postTurn(line, key, controller.signal);
          started = true;
          await readEvents(response, (event) => stream.handle(event));
          break;
        } catch (err) {
          if (controller.signal.aborted || !resendable(err) || attempt >= RESEND_TRIES) throw err;
          notice("The connection dropped during the turn; sending it again…", "warn");
          await sleep(500 * 2 ** (attempt - 1));
          stream.restart(); // the answer to the key shows the turn whole again
        }
      }
    } catch (err) {
      if (controller.signal.aborted) outcome = "stopped";
      else if (err instanceof ApiError) outcome = err;
      else outcome = "dropped";
    } finally {
      state.controller = null;
      stream.finish();
    }
    if (state.storyId !== storyId) {
      setBusy(false); // the player went elsewhere meanwhile
      return;
    }
    try {
      const before = stream.turnsBefore;
      const detail = started && outcome !== "done" ? await settled(stream.updatedBefore) : await resync();
      report(outcome, typed, before, detail);
    } catch (err) {
      fail(err);
    } finally {
      setBusy(false);
      if (!editForm.hidden) $("edit-text").focus();
      else $("line").focus();
    }
  }

  function report(outcome, typed, before, detail) {
    if (outcome === "done") {
      notice("");
    } else if (outcome === "stopped") {
      message("info", "Stopped. Retry tries again.");
      notice("");
    } else if (outcome === "dropped") {
      notice("The connection dropped during the turn; the story above is what the server kept.", "warn");
      if (typed && detail.turns === before) $("line").value = typed; // not played: Enter sends it again
    } else if (outcome.status === 401 || outcome.status === 404) {
      fail(outcome);
    } else {
      message("error", outcome.message);
      if (typed) $("line").value = typed;
    }
  }

  // The line's own key: the server answers the same key again from what it saved, never plays it
  // twice. getRandomValues, unlike randomUUID, works on a plain-http LAN address too.
  function turnKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // A turn whose connection dropped (or whose server's proxy answered 500/502/504: a replica
  // gone) is sent again under its key, so a turn the server finished is shown, not played again.
  function resendable(err) {
    return !(err instanceof ApiError) || [500, 502, 504].includes(err.status);
  }

  // POST the line; a busy server (503, 429) or a turn still ending (409, after Stop) is asked again.
  async function postTurn(line, key, signal) {
    const path = `/api/stories/${encodeURIComponent(state.storyId)}/turns`;
    const keyed = { "Idempotency-Key": key };
    for (let attempt = 1; ; attempt++) {
      try {
        const response = await request(path, { method: "POST", body: { text: line }, signal, headers: keyed });
        notice("");
        return response;
      } catch (err) {
        const again = err instanceof ApiError && [409, 429, 503].includes(err.status);
        if (!again || attempt >= MAX_TRIES || signal.aborted) throw err;
        const wait = err.status === 409 ? 500 * attempt : waitFor(err, attempt);
        notice(`${why(err)} Trying again in ${Math.max(1, Math.round(wait / 1000))} s…`, "warn");
        await sleep(wait);
        if (signal.aborted) throw err;
      }
    }
  }

  // Read `data:` frames until `event: end`. A stream that ends without it was cut off.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new TypeError("the stream ended before the turn did");
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) !== -1) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const fields = parseFrame(frame);
        if (fields.event === "end") return;
        if (fields.data) onEvent(JSON.parse(fields.data));
      }
    }
  }

  function parseFrame(frame) {
    const fields = { event: "message", data: "" };
    for (const line of frame.split("\n")) {
      const colon = line.indexOf(":");
      if (colon <= 0) continue;
      const name = line.slice(0, colon);
      const value = line.slice(colon + 1).replace(/^ /, "");
      if (name === "data") fields.data += (fields.data ? "\n" : "") + value;
      else if (name === "event") fields.event = value;
    }
    return fields;
  }

  // What one turn shows while it runs: its action and the result streaming in, below the story.
  class Stream {
    constructor(line) {
      this.turnsBefore = state.turns;
      this.updatedBefore = state.updatedAt;
      this.box = el("div", "pending");
      $("story").append(this.box);
      this.preview = null;
      this.text = "";
      this.spoken = 0; // how much of `text` was announced
      if (/^\/(r|retry)\b/i.test(line)) this.markReplaced();
    }

    // A retry's new take replaces the last result: show the old one as on its way out.
    markReplaced() {
      const results = $("story").querySelectorAll("p.result, p.opening");
      const last = results[results.length - 1];
      if (last && last.classList.contains("result")) {
        last.classList.add("replaced");
        last.setAttribute("aria-hidden", "true");
      }
    }

    handle(event) {
      const text = typeof event.text === "string" ? event.text : "";
      switch (event.kind) {
        case "action":
          this.box.append(el("p", "action", text));
          announce("You: " + text);
          break;
        case "piece":
          this.piece(text);
          break;
        case "restart":
          this.dropPreview();
          break;
        case "result":
        case "story":
        case "opening":
          this.result(text);
          break;
        case "edit":
          openEdit(text, typeof event.data === "string" ? event.data : "/alter ");
          break;
        case "table":
          if (event.table) showTable(event.table);
          break;
        case "error":
          message("error", text);
          break;
        default: // info, text, quit
          message(event.kind === "text" ? "text" : "info", text);
      }
      scrollDown();
    }

    piece(text) {
      if (!this.preview) {
        this.preview = el("p", "result streaming");
        this.box.append(this.preview);
      }
      this.text += text;
      this.preview.textContent = this.text;
      // Announce whole sentences as they complete, not every word.
      const end = Math.max(this.text.lastIndexOf(". "), this.text.lastIndexOf("! "), this.text.lastIndexOf("? "));
      if (end + 1 > this.spoken) {
        announce(this.text.slice(this.spoken, end + 1));
        this.spoken = end + 1;
      }
    }

    restart() {
      this.dropPreview();
      this.box.replaceChildren();
    }

    dropPreview() {
      if (this.preview) this.preview.remove();
      this.preview = null;
      this.text = "";
      this.spoken = 0;
    }

    result(text) {
      const unspoken = this.spoken && text.startsWith(this.text.slice(0, this.spoken)) ? text.slice(this.spoken) : text;
      this.dropPreview();
      this.box.append(el("p", "result", text));
      announce(unspoken);
    }

    // The turn is over (or stopped): what was streamed stays until the story is re-read.
    finish() {
      if (this.preview) this.preview.classList.remove("streaming");
      if (this.text.length > this.spoken) announce(this.text.slice(this.spoken));
    }
  }

  function stop() {
    if (state.controller) state.controller.abort(); // the server cancels the turn when we hang up
  }

  // -- messages, tables, editing -------------------------------------------------------------

  function message(kind, text) {
    if (!text) return;
    const node = el("p", "message " + kind, text);
    if (kind === "error") node.setAttribute("role", "alert");
    $("messages").append(node);
    if (kind !== "error") announce(text);
  }

  function showTable(table) {
    const node = el("table");
    if (table.title) node.append(el("caption", "", table.title));
    const head = el("tr");
    for (const column of table.columns) {
      const th = el("th", "", column);
      th.scope = "col";
      head.append(th);
    }
    node.append(el("thead"), el("tbody"));
    node.tHead.append(head);
    for (const row of table.rows) {
      const tr = el("tr");
      for (const cell of row) tr.append(el("td", "", cell));
      node.tBodies[0].append(tr);
    }
    const wrap = el("div", "table-wrap");
    wrap.append(node);
    $("messages").append(wrap);
    const hint = [table.footer, TABLE_HINTS[table.title]].filter(Boolean).join(" ");
    if (hint) $("messages").append(el("p", "message hint", hint));
    announce(`${table.title}: ${table.rows.length} rows`);
  }

  function openEdit(text, prefix) {
    state.editPrefix = prefix;
    $("edit-text").value = text;
    editForm.hidden = false;
    placeEdit();
    $("edit-text").focus();
  }

  // Edit in place: the form stands where the last result was, which is hidden meanwhile.
  function placeEdit() {
    if (editForm.hidden) return;
    const results = $("story").querySelectorAll("p.result, p.opening");
    const last = results[results.length - 1];
    if (!last) return;
    last.hidden = true;
    last.after(editForm);
  }

  function closeEdit() {
    editForm.hidden = true;
    state.editPrefix = "";
    $("messages").after(editForm); // back home, out of the story
    for (const node of $("story").querySelectorAll("p[hidden]")) node.hidden = false;
  }

  function saveEdit(event) {
    event.preventDefault();
    const text = $("edit-text").value.trim();
    if (!text || state.busy) return;
    const line = state.editPrefix + text;
    closeEdit();
    playTurn(line);
  }

  // -- keys ----------------------------------------------------------------------------------

  function onKey(event) {
    if (event.key === "Escape" && state.busy) {
      event.preventDefault();
      stop();
    } else if (event.key === "Escape" && !editForm.hidden) {
      closeEdit();
      $("line").focus();
    } else if (event.altKey && ["Digit1", "Digit2", "Digit3"].includes(event.code) && !$("play").hidden) {
      event.preventDefault(); // by code, not key: Alt+1 types "¡" on a Mac keyboard
      const radio = document.querySelectorAll('input[name="mode"]')[Number(event.code.slice(-1)) - 1];
      radio.checked = true;
      placeholder();
      $("line").focus();
    }
  }

  function onLineKey(event) {
    if (event.key !== "ArrowUp" && event.key !== "ArrowDown") return;
    if (!state.history.length) return;
    event.preventDefault();
    const step = event.key === "ArrowUp" ? -1 : 1;
    state.historyAt = Math.max(0, Math.min(state.history.length, state.historyAt + step));
    $("line").value = state.history[state.historyAt] || "";
  }

  function placeholder() {
    const text = { do: "What do you do?", say: "What do you say?", story: "What happens next?" };
    $("line").placeholder = text[currentMode()];
  }

  // -- wiring --------------------------------------------------------------------------------

  function wire() {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("to-stories").addEventListener("click", () => {
      location.hash = "";
    });
    $("setting").addEventListener("change", fillCharacters);
    $("new-form").addEventListener("submit", startFromSetting);
    $("custom-form").addEventListener("submit", startCustom);
    $("line-form").addEventListener("submit", submitLine);
    $("line").addEventListener("keydown", onLineKey);
    $("stop").addEventListener("click", stop);
    editForm.addEventListener("submit", saveEdit);
    $("edit-cancel").addEventListener("click", () => {
      closeEdit();
      $("line").focus();
    });
    for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", placeholder);
    $("toolbar").addEventListener("click", (event) => {
      const target = event.target.closest("button");
      if (!target || state.busy) return;
      if (target.dataset.line) playTurn(target.dataset.line);
      else if (target.dataset.export) exportStory(state.storyId, target.dataset.export);
    });
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", () => {
      if (state.busy) stop();
      route();
    });
    placeholder();
  }

  wire();
  route();
})();
