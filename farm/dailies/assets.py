"""The dailies page's stylesheet and script, inlined into every page so it needs nothing from the network.

Both are constant text: the server pins them by hash in its Content-Security-Policy, so nothing else on the
page (a storyboard prompt that slipped past escaping, say) could ever run or restyle it.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
:root { color-scheme: dark; --bg: #15171a; --card: #1f2227; --line: #33373e; --text: #e4e6ea;
  --dim: #9aa1ab; --accent: #f5b642; --ok: #4cc38a; --warn: #e5a03a; --bad: #ef5b5b; --info: #6aa8ff; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text); font: 14px/1.45 system-ui, sans-serif; }
body > header { padding: 16px 24px; border-bottom: 1px solid var(--line); }
h1 { margin: 0 0 4px; font-size: 20px; }
h2 { margin: 0; font-size: 16px; }
code, kbd { font: 12px ui-monospace, monospace; }
kbd { border: 1px solid var(--line); border-radius: 4px; padding: 0 5px; background: var(--card); }
.run, .keys, .note { margin: 4px 0; color: var(--dim); }
.note { color: var(--warn); }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(400px, 1fr)); gap: 16px;
  align-items: start; padding: 24px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px;
  outline: none; cursor: pointer; }
.card.selected { border-color: var(--accent); box-shadow: 0 0 0 2px var(--accent); }
.card > header { display: flex; align-items: center; gap: 8px; flex-wrap: wrap; margin-bottom: 10px; }
.take { color: var(--dim); font-weight: normal; }
.badge { border-radius: 999px; padding: 1px 9px; font-size: 12px; background: var(--line); }
.review-approved, .state-done { background: #1d4d36; color: #b5f0d0; }
.review-retake, .state-failed { background: #5a2426; color: #ffc9c9; }
.review-needs_review, .state-held { background: #5a4418; color: #ffe2a8; }
.review-generated, .state-running { background: #1d3a63; color: #cfe2ff; }
.media { display: flex; gap: 6px; flex-wrap: wrap; align-items: flex-end; }
.media a { position: relative; display: block; color: var(--text); text-decoration: none; }
.media img { display: block; height: 160px; width: auto; border-radius: 4px; background: #000; }
.media a span { position: absolute; left: 4px; bottom: 4px; font-size: 11px; padding: 0 4px;
  background: rgba(0, 0, 0, .65); border-radius: 3px; }
.media .clip img { outline: 2px solid var(--info); }
.missing { display: flex; align-items: center; justify-content: center; width: 90px; height: 160px;
  border: 1px dashed var(--line); border-radius: 4px; color: var(--dim); font-size: 12px;
  text-align: center; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px; margin: 10px 0 0; }
dt { color: var(--dim); }
dd { margin: 0; overflow-wrap: anywhere; font-size: 13px; }
dd a { color: var(--info); }
.actions { display: flex; gap: 6px; margin-top: 10px; }
button { font: inherit; color: var(--text); background: var(--line); border: 1px solid transparent;
  border-radius: 6px; padding: 4px 10px; cursor: pointer; }
button:hover:enabled { border-color: var(--accent); }
button:disabled { opacity: .45; cursor: not-allowed; }
.message { min-height: 1.4em; margin: 6px 0 0; color: var(--dim); }
"""

SCRIPT = """
"use strict";
(() => {
  const cards = Array.from(document.querySelectorAll(".card"));
  const tokenTag = document.querySelector('meta[name="farm-token"]');
  const token = tokenTag ? tokenTag.content : "";
  const keys = { a: "approve", r: "retake", n: "needs_review" };
  let current = 0;

  function select(index, scroll) {
    if (!cards.length) return;
    current = Math.max(0, Math.min(cards.length - 1, index));
    cards.forEach((card, i) => {
      card.classList.toggle("selected", i === current);
      card.setAttribute("aria-current", i === current ? "true" : "false");
    });
    cards[current].focus({ preventScroll: true });
    if (scroll) cards[current].scrollIntoView({ block: "nearest" });
  }

  function show(card, field, value, prefix) {
    const badge = card.querySelector('[data-field="' + field + '"]');
    badge.textContent = value;
    badge.className = "badge " + prefix + value.split(" ")[0];
  }

  async function act(card, action) {
    const message = card.querySelector(".message");
    if (document.body.dataset.review !== "1") return;
    if (!token) { message.textContent = document.body.dataset.readonly; return; }
    message.textContent = action.replace("_", " ") + "…";
    try {
      const reply = await fetch("/api/review", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Farm-Token": token },
        body: JSON.stringify({ shot: Number(card.dataset.shot), action: action }),
      });
      const doc = await reply.json();
      if (!reply.ok) { message.textContent = doc.error; return; }
      show(card, "review", doc.review, "review-");
      show(card, "state", doc.state + " " + doc.done + "/" + doc.total, "state-");
      message.textContent = doc.message;
    } catch (error) {
      message.textContent = "the farm did not answer: " + error;
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const action = keys[event.key.toLowerCase()];
    if (event.key === "ArrowRight" || event.key === "ArrowDown") select(current + 1, true);
    else if (event.key === "ArrowLeft" || event.key === "ArrowUp") select(current - 1, true);
    else if (action && cards.length) act(cards[current], action);
    else return;
    event.preventDefault();
  });
  cards.forEach((card, i) => {
    card.addEventListener("click", () => select(i, false));
    card.querySelectorAll("button[data-action]").forEach((button) => {
      button.addEventListener("click", () => act(card, button.dataset.action));
    });
  });
  select(0, false);
})();
"""


def csp_hash(text: str) -> str:
    """The CSP source expression that allows exactly this inline <style> or <script> body."""
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "img-src 'self'",
        "media-src 'self'",
        f"style-src {csp_hash(STYLE)}",
        f"script-src {csp_hash(SCRIPT)}",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
"""What the served page may load and run: its own inline style and script, and files from its own origin."""
