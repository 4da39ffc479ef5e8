"""Dialogue logic of the example assistant: a Prediction (intent + slot tags) in, one reply out.

Each intent has reply templates, most specific first; the first whose slots were all heard is used.
Anything the model abstains on, calls out of scope, or has no reply for gets the fallback.
"""
from __future__ import annotations

import random
from datetime import datetime
from string import Formatter

FALLBACK = ("Sorry, I can't help with that. I can control lights, heating, music, the TV and door locks, "
            "set timers, alarms and reminders, and tell you the time, weather and news. Say 'help' for more.")

REPLIES = {
    "lights_on": ["Turning on the lights in the {room}.", "Turning on the lights."],
    "lights_off": ["Turning off the lights in the {room}.", "Turning off the lights."],
    "lights_dim": ["Dimming the {room} lights to {level}.", "Dimming the lights in the {room}.",
                   "Dimming the lights to {level}.", "Dimming the lights."],
    "thermostat_set": ["Setting the {room} to {temperature}.", "Setting the thermostat to {temperature}.",
                       "What temperature would you like?"],
    "thermostat_up": ["Raising the temperature in the {room} by {temperature}.",
                      "Turning up the heat in the {room}.", "Raising the temperature by {temperature}.",
                      "Turning up the heat."],
    "thermostat_down": ["Lowering the temperature in the {room} by {temperature}.",
                        "Cooling down the {room}.", "Lowering the temperature by {temperature}.",
                        "Turning down the heat."],
    "play_music": ["Playing {song} by {artist}.", "Playing {song}.", "Playing {artist} in the {room}.",
                   "Playing {artist}.", "Playing some {genre} in the {room}.", "Playing some {genre}.", "Playing music in the {room}.", "Playing music."],
    "pause_music": ["Pausing the music in the {room}.", "Paused."],
    "next_track": ["Skipping to the next track."],
    "volume_up": ["Setting the volume to {level}.", "Turning it up in the {room}.", "Turning it up."],
    "volume_down": ["Setting the volume to {level}.", "Turning it down in the {room}.", "Turning it down."],
    "timer_set": ["Timer set for {duration}.", "How long should the timer run?"],
    "timer_cancel": ["Cancelled your {duration} timer.", "Timer cancelled."],
    "alarm_set": ["Alarm set for {time} {date}.", "Alarm set for {time}.", "What time should the alarm go off?"],
    "weather": ["Here is the weather in {city} {date}.", "Here is the weather in {city}.",
                "Here is the forecast {date}.", "Here is the weather."],
    "time_query": ["It's {clock}."],
    "reminder_set": ["I'll remind you to {task} at {time}.", "I'll remind you to {task} {date}.",
                     "I'll remind you to {task}.", "What should I remind you about?"],
    "shopping_list_add": ["Added {item} to your shopping list.", "What should I add to the shopping list?"],
    "door_lock": ["Locking the {door}.", "Locking the doors."],
    "door_unlock": ["Unlocking the {door}.", "Which door should I unlock?"],
    "vacuum_start": ["Sending the vacuum to the {room}.", "Starting the vacuum."],
    "tv_on": ["Turning on the TV in the {room}.", "Turning on the TV."],
    "tv_channel": ["Switching to {channel}.", "Changing the channel."],
    "call_contact": ["Calling {contact}.", "Who would you like to call?"],
    "calendar_query": ["Here is your calendar {date}.", "Here is your calendar."],
    "news": ["Here are the latest {topic} headlines.", "Here are the latest headlines."],
    "greeting": ["Hello! How can I help?"],
    "goodbye": ["Goodbye!"],
    "thanks": ["You're welcome."],
    "joke": ["{joke}"],
    "help": ["I can turn lights on, off or dim them, set the thermostat, play and skip music, change the "
             "volume, set timers, alarms and reminders, add to your shopping list, lock doors, start the "
             "vacuum, switch the TV, call people, and tell you the time, weather, news and your calendar."],
}

JOKES = [
    "My thermostat and I had a heated argument. We settled it at 21 degrees.",
    "I told the lights a joke. They didn't get it, but they were delighted.",
    "Why did the robot vacuum quit? It was tired of everyone walking all over it.",
    "I'd tell you a joke about the smart fridge, but it's a bit cold.",
]


def slot_values(slots: list[tuple[str, str | None]] | None) -> dict[str, list[str]]:
    """The words of each B-/I- span, grouped by slot name: [("dim", "O"), ("kids", "B-room"), ...] → {"room": [...]}."""
    values: dict[str, list[str]] = {}
    name = None
    for word, tag in slots or []:
        if tag and tag.startswith("B-"):
            name = tag[2:]
            values.setdefault(name, []).append(word)
        elif tag and tag.startswith("I-") and name == tag[2:]:
            values[name][-1] += " " + word
        else:
            name = None
    return values


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def respond(prediction, now: datetime | None = None) -> str:
    """The assistant's reply to one Predictor result (anything with .label, .abstained and .slots)."""
    templates = REPLIES.get(prediction.label)
    if templates is None or prediction.abstained:
        return FALLBACK
    fields = {name: _and(words) for name, words in slot_values(prediction.slots).items()}
    fields["clock"] = (now or datetime.now()).strftime("%H:%M")
    fields["joke"] = random.choice(JOKES)
    heard = [t for t in templates if {f for _, f, _, _ in Formatter().parse(t) if f} <= fields.keys()]
    return heard[0].format(**fields) if heard else FALLBACK
