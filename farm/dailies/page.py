"""The dailies page as HTML: a contact sheet of the run's shots in `<output_dir>/dailies/`, one card per shot.

Self-contained (inline style and script, thumbnails beside it, clips and frames linked relatively), so the
folder can be opened from disk, copied or served as is. Every piece of storyboard text is escaped: prompts
and names come from whoever wrote the storyboard.
"""

from __future__ import annotations

import html
import os
import secrets
from pathlib import Path
from urllib.parse import quote

from farm.dailies.assets import SCRIPT, STYLE
from farm.dailies.sheet import Card, Dailies, Media
from farm.dailies.thumbs import thumbnail
from farm.planning.figures import usd

DAILIES_DIR = "dailies"
THUMBS_DIR = "thumbs"
INDEX = "index.html"
ACTIONS = (("approve", "Approve", "A"), ("retake", "Retake", "R"), ("needs_review", "Needs review", "N"))
"""(action, button, key): the studio's dailies shortcuts."""


def page_dir(dailies: Dailies) -> Path:
    return dailies.output_dir / DAILIES_DIR


def make_thumbs(dailies: Dailies) -> dict[str, str]:
    """Each keyframe's and clip's thumbnail file name in `dailies/thumbs/`, by output name; media without
    one (not on disk, unreadable) are left out."""
    folder = page_dir(dailies) / THUMBS_DIR
    media = [m for card in dailies.cards for m in (*card.frames, *([card.clip] if card.clip else []))]
    thumbs = {m.name: thumbnail(dailies.output_dir / m.name, folder) for m in media if m.present}
    return {name: thumb for name, thumb in thumbs.items() if thumb is not None}


def write_page(dailies: Dailies) -> Path:
    """Write `dailies/index.html` and its thumbnails; return the page. The file has no token: its action
    buttons stay disabled until the page is served."""
    thumbs = make_thumbs(dailies)
    index = page_dir(dailies) / INDEX
    index.parent.mkdir(parents=True, exist_ok=True)
    partial = index.with_name(f".{INDEX}.{secrets.token_hex(4)}")
    try:
        partial.write_text(render(dailies, thumbs), encoding="utf-8")
        os.replace(partial, index)
    finally:
        partial.unlink(missing_ok=True)
    return index


def render(dailies: Dailies, thumbs: dict[str, str], token: str | None = None) -> str:
    """The page; `token` (served pages only) enables the action buttons and keys."""
    title = _e(dailies.title)
    run = _e(dailies.run_id)
    readonly = f"Read-only page: `farm dailies {dailies.run_id} --serve` approves, retakes and flags shots."
    if not dailies.review:
        note = "This run was not submitted with --review: there is nothing to approve."
    elif token is None:
        note = readonly
    else:
        note = ""
    head = [
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        *([f'<meta name="farm-token" content="{_e(token)}">'] if token else []),
        f"<title>dailies · {title}</title>",
        f"<style>{STYLE}</style>",
    ]
    live = dailies.review and token is not None
    cards = "\n".join(_card(card, thumbs, live=live) for card in dailies.cards)
    return f"""<!doctype html>
<html lang="en"><head>
{chr(10).join(head)}
</head>
<body data-review="{int(dailies.review)}" data-readonly="{_e(readonly)}">
<header>
<h1>{title}</h1>
<p class="run">run <code>{run}</code> · status <b>{_e(dailies.status)}</b>
· {dailies.done}/{dailies.total} steps · estimated {usd(dailies.estimated_usd)}
· spent {usd(dailies.spent_usd)}</p>
<p class="keys"><kbd>←</kbd> <kbd>→</kbd> <kbd>↑</kbd> <kbd>↓</kbd> select a shot · <kbd>A</kbd> approve ·
<kbd>R</kbd> retake · <kbd>N</kbd> needs review</p>
{f'<p class="note">{_e(note)}</p>' if note else ""}
</header>
<main>
{cards}
</main>
<script>{SCRIPT}</script>
</body></html>
"""


def _card(card: Card, thumbs: dict[str, str], *, live: bool) -> str:
    review = f'<span class="badge review-{_e(card.review)}" data-field="review">{_e(card.review)}</span>'
    state = f"{card.state} {card.done}/{card.total}" + (f" · {card.activity}" if card.activity else "")
    facts = [
        *[(f"{role} prompt", _e(text)) for role, text in card.image_prompts],
        *([("motion prompt", _e(card.motion_prompt))] if card.motion_prompt else []),
        ("seeds", " · ".join(f"{_e(role)} {seed}" for role, seed in card.seeds) or "-"),
        ("engines", _e(", ".join(card.engines)) or "-"),
        ("cost", f"estimated {usd(card.estimated_usd)} · spent {usd(card.spent_usd)}"),
        *([("earlier takes", _earlier(card))] if card.earlier else []),
    ]
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    buttons = "".join(
        f'<button type="button" data-action="{action}"{"" if live else " disabled"}>'
        f"{label} <kbd>{key}</kbd></button>"
        for action, label, key in ACTIONS
    )
    return f"""<article class="card" data-shot="{card.shot}" tabindex="-1" aria-label="shot {card.shot}">
<header><h2>Shot {card.shot} <span class="take">T{card.take:02d}</span></h2>
{review if card.review else ""}
<span class="badge state-{_e(card.state)}" data-field="state">{_e(state)}</span>
<span class="take">{_e(card.approach)}</span></header>
<div class="media">{_media(card, thumbs)}</div>
<dl>{rows}</dl>
{f'<div class="actions">{buttons}</div><p class="message" role="status"></p>' if card.review else ""}
</article>"""


def _media(card: Card, thumbs: dict[str, str]) -> str:
    frames = [_thumb(m, thumbs, f"shot {card.shot} {m.label}") for m in card.frames]
    if not frames:
        frames.append('<span class="missing">no keyframes yet</span>')
    if card.clip is None:
        frames.append('<span class="missing">no clip yet</span>')
    else:
        frames.append(_thumb(card.clip, thumbs, f"shot {card.shot} clip", css="clip"))
    return "".join(frames)


def _thumb(media: Media, thumbs: dict[str, str], alt: str, css: str = "") -> str:
    if not media.present:
        return f'<span class="missing">{_e(media.label)}: not on disk</span>'
    label = "▶ clip" if css == "clip" else media.label
    thumb = thumbs.get(media.name)
    picture = f'<img src="{_href(THUMBS_DIR, thumb)}" alt="{_e(alt)}">' if thumb else _e(media.name)
    return (
        f'<a class="{css}" href="{_href("..", media.name)}" title="{_e(media.name)}">'
        f"{picture}<span>{_e(label)}</span></a>"
    )


def _earlier(card: Card) -> str:
    parts = []
    for take in card.earlier:
        links = " ".join(f'<a href="{_href("..", m.name)}">{_e(m.name)}</a>' for m in take.files)
        parts.append(f"T{take.take:02d} ({len(take.files)} files) {links}".strip())
    return "<br>".join(parts)


def _href(folder: str, name: str) -> str:
    return _e(f"{folder}/{quote(name)}")


def _e(text: str) -> str:
    return html.escape(text, quote=True)
