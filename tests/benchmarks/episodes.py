"""Storyboards made in code for the benchmarks: one episode of any length, or a season of them.

The series is "Tidewater": a courier and a ferryman in a half-drowned port city. Shot approaches follow
fixed positions so that any length gets a realistic mix; 31 shots give the studio's usual episode:
25 standard first-last-frame shots, 5 triptychs and 1 held insert, with continuity links from each
triptych into the shot after it and one four-shot chain (shots 8 to 11), the longest path in the plan.
Prompts are short enough for Z-Image's 60-word window, so nothing is cut by the prompt compiler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm.episode.validate import Episode, check_episode
from farm.planning.plan import Plan, build_plan

Doc = dict[str, Any]

PROJECT = "TIDE"
PROJECT_NAME = "tidewater"
STYLE = "35mm film still, shallow depth of field."

REGISTRY: Doc = {
    "schema_version": 1,
    "characters": {
        "MARA": {
            "trigger": "TIDEMARA",
            "description": "Wiry courier in her twenties, yellow oilskin, cropped black hair, satchel",
            "t2i": {
                "z_image_turbo": {
                    "path": "https://example.invalid/loras/mara_zimage.safetensors",
                    "scale_solo": 1.3,
                },
                "flux2": {"path": "https://example.invalid/loras/mara_flux2.safetensors", "scale_solo": 1.0},
            },
            "video": {
                "wan22": {
                    "high_noise_path": "https://example.invalid/loras/mara_wan_high.safetensors",
                    "low_noise_path": "https://example.invalid/loras/mara_wan_low.safetensors",
                    "scale": 1.0,
                }
            },
            "scale_dual": 0.5,
        },
        "OSKAR": {
            "trigger": "TIDEOSKAR",
            "description": "Broad ferryman in his sixties, grey beard, knitted cap, patched canvas coat",
            "t2i": {
                "z_image_turbo": {
                    "path": "https://example.invalid/loras/oskar_zimage.safetensors",
                    "scale_solo": 1.3,
                },
                "flux2": {"path": "https://example.invalid/loras/oskar_flux2.safetensors", "scale_solo": 1.0},
            },
            "scale_dual": 0.5,
        },
    },
}

PLACES = (
    "a flooded night market under strings of paper lanterns",
    "a rusted ferry dock in steady rain",
    "a narrow canal between leaning brick tenements",
    "the cramped wheelhouse of an old tugboat",
    "a rooftop water tank above the harbour",
    "a tiled bathhouse half under water",
    "a signal tower at the end of the breakwater",
    "a noodle stall standing on stilts",
    "a drowned subway platform lit by work lamps",
    "a customs warehouse stacked with salt-stained crates",
)
LIGHT = (
    "at dusk, sodium light on wet stone",
    "just before dawn, cold blue haze over the water",
    "at midnight, neon reflected in black water",
    "in grey morning drizzle",
    "under a bruised storm sky",
    "in amber late-afternoon sun",
)
WHO = {
    ("MARA",): "TIDEMARA, a wiry courier in a yellow oilskin,",
    ("OSKAR",): "TIDEOSKAR, a bearded ferryman in a knitted cap,",
    ("MARA", "OSKAR"): "TIDEMARA and TIDEOSKAR, courier and ferryman,",
}
ACTIONS = (
    ("pauses at the edge of the crowd, scanning faces", "has crossed to the far side, glancing back"),
    ("crouches to read a chalk mark on the wall", "stands and pockets a folded note"),
    ("steps onto a swaying plank bridge", "reaches the far end, one hand on a mooring post"),
    ("leans over the rail to watch the current", "turns away from the rail, jaw set"),
    ("unwraps a parcel under a dripping awning", "ties the parcel shut and shoulders it"),
    ("knocks twice on a barred door", "slips inside as the door swings open"),
    ("hauls a rope hand over hand", "makes the rope fast around a cleat"),
)
EMPTY = (
    ("Empty {place} {light}, water lapping at the steps.", "The same view as a single lamp flickers on."),
    ("Deserted {place} {light}, a lone gull on a post.", "The same view as the gull lifts off the post."),
)
MOTIONS = (
    "Slow dolly alongside the movement, rain drifting past the lens.",
    "Handheld follow at shoulder height, a gentle sway with each step.",
    "Locked-off wide frame, the figure crossing it left to right.",
    "Slow push in on the face, background lights pulsing softly.",
    "Crane down from above as the action settles.",
)


def approach_of(shot: int, shots: int) -> str:
    """Every sixth shot from shot 2 is a triptych; one held insert near the middle; the rest standard."""
    if shot == shots // 2 + 1:
        return "held_frame_static"
    if shot % 6 == 2:
        return "triptych_split_flf"
    return "standard_flf"


def continuity_of(shot: int, shots: int) -> dict[str, Any] | None:
    """The shot after each triptych opens on its last panel; shots 10 and 11 continue from the shot
    before, which makes 8 -> 9 -> 10 -> 11 one chain."""
    if approach_of(shot, shots) == "triptych_split_flf" or shot == 1:
        return None
    if shot % 6 == 3 or shot % 30 in (10, 11):
        return {"shot": shot - 1, "frame": "last", "strength": 0.35}
    return None


def cast_of(shot: int) -> tuple[str, ...]:
    return ((), ("MARA",), ("OSKAR",), ("MARA", "OSKAR"))[shot % 4]


def _shot(shot: int, shots: int, episode: int) -> Doc:
    turn = shot + 3 * episode
    place, light = PLACES[turn % len(PLACES)], LIGHT[(turn // 2) % len(LIGHT)]
    approach = approach_of(shot, shots)
    cast = cast_of(shot)
    doc: Doc = {
        "shot": shot,
        "scene": 1 + (shot - 1) // 6,
        "generation_approach": approach,
        "characters_in_shot": list(cast),
    }
    if approach == "held_frame_static":
        doc["first_frame"] = f"Insert of a brass ship's bell {light}, rainwater beading on the metal. {STYLE}"
        doc["duration_s"] = 2
    elif approach == "triptych_split_flf":
        who = WHO.get(cast, "A hooded figure")
        beats = [ACTIONS[(turn + k) % len(ACTIONS)][0] for k in range(3)]
        doc["triptych_prompt"] = (
            f"Three-panel cinematic triptych, left to right: {who} {beats[0]}; then {beats[1]}; "
            f"then {beats[2]}. {place.capitalize()} {light}. {STYLE}"
        )
        doc["duration_s"] = 6
    else:
        doc.update(_standard_prompts(cast, place, light, turn))
        doc["duration_s"] = 5
    if approach != "held_frame_static":
        doc["motion_prompt"] = MOTIONS[turn % len(MOTIONS)]
    link = continuity_of(shot, shots)
    if link is not None:
        doc["continuity_from"] = link
    return doc


def _standard_prompts(cast: tuple[str, ...], place: str, light: str, turn: int) -> Doc:
    if not cast:
        first, last = EMPTY[turn % len(EMPTY)]
        return {"first_frame": first.format(place=place, light=light), "last_frame": last}
    who = WHO[cast]
    start, end = ACTIONS[turn % len(ACTIONS)]
    prompts: Doc = {
        "first_frame": f"{who} {start}, in {place} {light}. {STYLE}",
        "last_frame": f"{who} {end}, in {place}. {STYLE}",
    }
    if turn % 4 == 0:
        prompts["hero_frame"] = f"{who} mid-stride in {place} {light}, coat streaming water. {STYLE}"
    return prompts


def episode_doc(episode: int = 1, shots: int = 31) -> Doc:
    """A schema v3 storyboard of `shots` shots; the episode number varies prompts and seeds."""
    return {
        "schema_version": 3,
        "project": PROJECT,
        "project_name": PROJECT_NAME,
        "episode": episode,
        "title": f"Tidewater, part {episode}",
        "aspect_ratio": "9:16",
        "defaults": {"engine": "z_image_turbo", "img2img_strength": 0.4, "fmlf": False},
        "shots": [_shot(n, shots, episode) for n in range(1, shots + 1)],
    }


def chain_doc(links: int, episode: int = 1) -> Doc:
    """Held shots, each opening on the previous one's first frame: image, upscale, image, upscale, ...
    one dependency chain of `links` hops (the short holds branch off it)."""
    count = max(1, (links + 2) // 2)
    shots = []
    for n in range(1, count + 1):
        shot: Doc = {
            "shot": n,
            "generation_approach": "held_frame_static",
            "characters_in_shot": [],
            "first_frame": f"{PLACES[n % len(PLACES)].capitalize()} {LIGHT[n % len(LIGHT)]}. {STYLE}",
            "duration_s": 0.25,
        }
        if n > 1:
            shot["continuity_from"] = {"shot": n - 1, "frame": "first", "strength": 0.3}
        shots.append(shot)
    return {**episode_doc(episode, 1), "title": "hop chain", "shots": shots}


def validated(doc: Doc, name: str = "storyboard.json") -> Episode:
    """Run the storyboard through the farm's validator (raises InputError listing every problem)."""
    return check_episode(doc, REGISTRY, Path(name), Path("lora_registry.json"))


def plan_of(doc: Doc) -> Plan:
    """Validate and plan; refuse a prompt the compiler had to cut (the generator keeps them short)."""
    plan = build_plan(validated(doc))
    cut = [note for step in plan.steps for note in step.notes if note.startswith("cut from")]
    if cut:
        raise ValueError(f"generated prompts exceed an engine's word window: {cut[:3]}")
    return plan
