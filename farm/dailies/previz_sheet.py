"""What `farm previz` leaves beside its frames: previz_manifest.json and a contact sheet (PNG and HTML)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

THUMB = (160, 280)
"""A 512x896 previz frame at under a third of its size: the whole episode fits on one screen."""
COLUMNS = 5
CAPTION_H = 22


def write_previz(manifest_path: Path) -> tuple[Path, Path, Path]:
    """From the run's manifest.json: previz_manifest.json, contact_sheet.png and contact_sheet.html."""
    manifest = json.loads(manifest_path.read_text())
    folder = manifest_path.parent
    shots = [_shot(row) for row in manifest["steps"] if row["kind"] == "t2i"]
    shots.sort(key=lambda s: s["shot"])
    doc = {
        "run_id": manifest["run"],
        "project": manifest.get("project"),
        "episode": manifest.get("episode"),
        "cost_usd": manifest["cost_usd"],
        "shots": shots,
    }
    previz = folder / "previz_manifest.json"
    previz.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    return previz, _sheet_png(folder, shots), _sheet_html(folder, doc)


def _shot(row: dict[str, Any]) -> dict[str, Any]:
    output = row["outputs"][0]
    return {
        "shot": row["shot"],
        "file": Path(output["path"]).name if output.get("path") else output["asset_name"],
        "prompt": row.get("prompt"),
        "seed": row["params"].get("seed"),
        "engine": row["engine"],
        "size": [row["params"].get("width"), row["params"].get("height")],
        "steps": row["params"].get("steps"),
        "cost_usd": row["cost_usd"],
        "notes": row.get("notes", []),
    }


def _sheet_png(folder: Path, shots: list[dict[str, Any]]) -> Path:
    rows = max(1, -(-len(shots) // COLUMNS))
    cell_w, cell_h = THUMB[0], THUMB[1] + CAPTION_H
    sheet = Image.new("RGB", (cell_w * min(COLUMNS, max(1, len(shots))), cell_h * rows), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for n, shot in enumerate(shots):
        x, y = (n % COLUMNS) * cell_w, (n // COLUMNS) * cell_h
        with Image.open(folder / shot["file"]) as frame:
            sheet.paste(frame.convert("RGB").resize(THUMB), (x, y))
        draw.text(
            (x + 6, y + THUMB[1] + 5), f"shot {shot['shot']}  seed {shot['seed']}", fill=(230, 230, 230)
        )
    target = folder / "contact_sheet.png"
    sheet.save(target)
    return target


def _sheet_html(folder: Path, doc: dict[str, Any]) -> Path:
    cards = "\n".join(_card(s) for s in doc["shots"])
    title = html.escape(f"{doc['project']} EP{doc['episode']:03d} previz")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{background:#181818;color:#ddd;font:14px sans-serif}}main{{display:flex;flex-wrap:wrap;gap:12px}}
figure{{width:{THUMB[0] * 2}px;margin:0}}img{{display:block}}figcaption{{margin-top:4px}}</style></head>
<body><h1>{title}</h1><p>run {html.escape(doc["run_id"])} · {len(doc["shots"])} shots ·
estimated ${doc["cost_usd"]["estimated"]}, spent ${doc["cost_usd"]["actual"]}</p>
<main>
{cards}
</main></body></html>
"""
    target = folder / "contact_sheet.html"
    target.write_text(page, encoding="utf-8")
    return target


def _card(shot: dict[str, Any]) -> str:
    size = f'width="{THUMB[0]}" height="{THUMB[1]}"'
    image = f'<img src="{html.escape(shot["file"])}" {size} alt="shot {shot["shot"]}">'
    facts = f"<b>shot {shot['shot']}</b> · seed {shot['seed']} · {html.escape(shot['engine'])}"
    facts += f" · ${shot['cost_usd']['estimated']}"
    return f"<figure>{image}<figcaption>{facts}<br>{html.escape(shot['prompt'] or '')}</figcaption></figure>"
