"""A smart-home assistant dataset written for this project: intents, BIO slot tags and an out-of-scope class.

Each intent is a few phrasing templates. In a template `(a|b|)` picks one alternative (maybe none) and `{room}`
is a slot filled from `SLOT_VALUES` (`{temperature:temperature_change}`: slot `temperature`, values from
another list); every word of a filled slot gets its B-/I- tag, every other word "O".
Generation is seeded by the intent's name, so the utterances are the same on every machine and Python run;
`splits(seed)` only changes which utterance lands in which split.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from edge_electra.atomic import atomic_dir
from edge_electra.data import Dataset, Example

OUT_OF_SCOPE = "oos"
PER_INTENT = 52
OUT_OF_SCOPE_COUNT = 150
SPLIT_FRACTIONS = {"validation": 0.15, "test": 0.15}

SLOT_VALUES = {
    "room": ["kitchen", "living room", "bedroom", "bathroom", "hallway", "office", "garage", "dining room",
             "kids room", "guest bedroom", "basement", "porch", "master bedroom", "laundry room", "attic"],
    "level": ["10 percent", "twenty percent", "30 percent", "40 percent", "half", "50 percent", "60 percent",
              "seventy percent", "a quarter", "low", "minimum", "25 percent", "80 percent", "five", "three"],
    "temperature": ["20 degrees", "21 degrees", "twenty two degrees", "68 degrees", "seventy degrees", "72",
                    "19 degrees celsius", "65 fahrenheit", "23 degrees", "seventy five", "18 degrees",
                    "24 degrees", "70 fahrenheit"],
    "temperature_change": ["two degrees", "a couple of degrees", "one degree", "three degrees", "5 degrees",
                           "a degree", "2 degrees", "half a degree"],
    "artist": ["taylor swift", "the beatles", "miles davis", "adele", "daft punk", "bob marley", "beyonce",
               "radiohead", "ed sheeran", "nina simone", "coldplay", "kendrick lamar", "abba", "queen",
               "norah jones", "the rolling stones", "billie eilish", "johnny cash"],
    "genre": ["jazz", "rock", "classical", "hip hop", "country", "lo fi", "reggae", "blues", "pop", "metal",
              "ambient", "folk", "soul", "electronic"],
    "song": ["yellow submarine", "bohemian rhapsody", "hey jude", "dancing queen", "clocks", "so what",
             "hurt", "hello", "shape of you", "feeling good", "three little birds", "paint it black"],
    "duration": ["5 minutes", "ten minutes", "one hour", "30 seconds", "twenty minutes", "an hour and a half",
                 "two minutes", "45 minutes", "half an hour", "90 seconds", "three hours", "12 minutes",
                 "a minute", "fifteen minutes", "8 minutes"],
    "time": ["7 am", "6 30", "seven thirty", "noon", "midnight", "8 pm", "quarter past six", "5 45 am",
             "nine oclock", "10 15", "six in the morning", "half past seven", "9 pm", "four pm", "eleven at night"],
    "date": ["today", "tomorrow", "this weekend", "on monday", "on friday", "next week", "tomorrow morning",
             "this afternoon", "on saturday", "tonight", "next tuesday", "on sunday evening"],
    "city": ["paris", "london", "new york", "tokyo", "berlin", "san francisco", "madrid", "chicago", "sydney",
             "toronto", "mumbai", "rome", "seattle", "cape town", "mexico city", "oslo"],
    "task": ["call the dentist", "take out the trash", "water the plants", "pick up the kids", "feed the cat",
             "buy milk", "pay the rent", "take my medicine", "send the report", "walk the dog",
             "book a haircut", "charge my phone", "stretch", "return the library books", "check the oven"],
    "item": ["milk", "eggs", "bread", "coffee", "bananas", "olive oil", "toilet paper", "dish soap", "apples",
             "chicken breast", "rice", "orange juice", "paper towels", "butter", "cat food", "tomatoes",
             "greek yogurt", "pasta"],
    "door": ["front door", "back door", "garage door", "side door", "patio door", "basement door",
             "main entrance", "gate"],
    "contact": ["mom", "dad", "grandma", "alex", "sarah", "john smith", "the office", "maria", "my brother",
                "dr patel", "david", "my sister", "emma", "uncle joe", "chris"],
    "channel": ["channel five", "channel 12", "bbc one", "cnn", "the news channel", "espn", "channel 4",
                "the cooking channel", "discovery", "channel nine", "hbo", "the weather channel"],
    "topic": ["sports", "tech", "business", "world", "science", "local", "political", "health",
              "entertainment", "financial"],
}

# name → (templates, wrapper set): wrappers add politeness and filler around a whole utterance.
INTENTS = {
    "lights_on": ("command", [
        "(turn|switch) on the (lights|light) in the {room}",
        "(turn|switch) the {room} (lights|light) on",
        "{room} lights on",
        "lights on in the {room}",
        "(can|could) you turn on the {room} (lights|light)",
        "it's too dark in the {room}",
        "(turn|switch) on the lights",
        "i need some light in the {room}",
        "light up the {room}",
        "(turn|put) the lights on (in here|)",
    ]),
    "lights_off": ("command", [
        "(turn|switch) off the (lights|light) in the {room}",
        "(turn|switch) the {room} (lights|light) off",
        "{room} lights off",
        "lights off in the {room}",
        "(can|could) you turn off the {room} (lights|light)",
        "kill the lights in the {room}",
        "(turn|switch) off (all|) the lights",
        "no more lights in the {room}",
        "shut off the {room} (lamp|lights)",
        "it's too bright in the {room} turn the lights off",
    ]),
    "lights_dim": ("command", [
        "dim the (lights|light) in the {room} (to {level}|)",
        "dim the {room} lights to {level}",
        "set the {room} (lights|lamp) to {level} (brightness|)",
        "(lower|reduce) the brightness in the {room}",
        "make the {room} lights dimmer",
        "turn the lights down to {level}",
        "(can|could) you dim the lights (a bit|a little|)",
        "set brightness to {level} in the {room}",
        "the {room} is too bright dim it (to {level}|)",
    ]),
    "thermostat_set": ("command", [
        "set the (thermostat|temperature|heating) to {temperature}",
        "set the {room} (thermostat|temperature) to {temperature}",
        "change the temperature to {temperature} (in the {room}|)",
        "i want it {temperature} in the {room}",
        "(make|keep) the house {temperature}",
        "thermostat {temperature}",
        "(can|could) you set the heat to {temperature}",
        "put the air conditioning on {temperature}",
    ]),
    "thermostat_up": ("command", [
        "turn up the (heat|heating|thermostat) (in the {room}|)",
        "(raise|increase) the temperature (by {temperature:temperature_change}|) (in the {room}|)",
        "make it warmer (in the {room}|)",
        "it's (cold|freezing|chilly) in (here|the {room})",
        "bump the heat up (by {temperature:temperature_change}|)",
        "(can|could) you warm up the {room}",
        "i'm cold",
        "heat up the {room} (a bit|)",
    ]),
    "thermostat_down": ("command", [
        "turn down the (heat|heating|thermostat) (in the {room}|)",
        "(lower|decrease) the temperature (by {temperature:temperature_change}|) (in the {room}|)",
        "make it cooler (in the {room}|)",
        "it's (hot|too warm|boiling|stuffy) in (here|the {room})",
        "drop the thermostat (by {temperature:temperature_change}|)",
        "(can|could) you cool down the {room}",
        "i'm (too hot|sweating)",
        "turn the ac up (in the {room}|)",
    ]),
    "play_music": ("command", [
        "play (some|) {genre} (music|)",
        "play {artist}",
        "play {song} by {artist}",
        "play (the song|) {song}",
        "put on (some|) {genre} (in the {room}|)",
        "i want to hear {artist}",
        "(can|could) you play something by {artist}",
        "play music (in the {room}|)",
        "start my {genre} playlist",
        "let's listen to {artist} (in the {room}|)",
    ]),
    "pause_music": ("command", [
        "pause (the music|the song|playback|)",
        "stop the music (in the {room}|)",
        "(hold on|wait) pause (it|this)",
        "stop playing",
        "(can|could) you pause the (music|song)",
        "pause the speaker in the {room}",
        "quiet pause that",
        "music off",
        "hit pause",
    ]),
    "next_track": ("command", [
        "(next|skip) (song|track|this song|this one)",
        "skip (it|this)",
        "play the next (song|track)",
        "go to the next (song|track)",
        "(can|could) you skip this (song|track)",
        "i don't like this song (skip it|next)",
        "next one",
        "skip ahead to the next track",
        "change the song",
    ]),
    "volume_up": ("command", [
        "turn (it|the volume|the music) up",
        "(turn up|raise|increase) the volume (to {level}|)",
        "louder",
        "(make|turn) it louder",
        "volume up (in the {room}|)",
        "i can't hear (it|the music|anything)",
        "set the volume to {level}",
        "(can|could) you turn up the (music|speaker) in the {room}",
        "pump up the volume",
    ]),
    "volume_down": ("command", [
        "turn (it|the volume|the music) down",
        "(turn down|lower|decrease) the volume (to {level}|)",
        "quieter",
        "(make|turn) it quieter",
        "volume down (in the {room}|)",
        "(it's|that's|the music is) too loud",
        "(can|could) you turn down the (music|speaker) in the {room}",
        "lower the sound (a bit|)",
        "not so loud",
    ]),
    "timer_set": ("command", [
        "set a timer for {duration}",
        "(start|set) a {duration} timer",
        "timer for {duration}",
        "(can|could) you time {duration} for me",
        "count down {duration}",
        "set the (kitchen|oven|pasta|egg) timer for {duration}",
        "start a timer",
        "remind me in {duration} that the oven is done",
        "{duration} timer",
    ]),
    "timer_cancel": ("command", [
        "(cancel|stop|delete) the timer",
        "(cancel|stop) my {duration} timer",
        "turn off the timer",
        "never mind the timer",
        "(can|could) you cancel the (kitchen|oven|pasta|) timer",
        "get rid of the timer",
        "i don't need the timer anymore",
        "stop (the|that) countdown",
        "clear all timers",
    ]),
    "alarm_set": ("command", [
        "set an alarm for {time} (tomorrow|)",
        "wake me up at {time} (tomorrow|on monday|)",
        "alarm at {time}",
        "(can|could) you set an alarm for {time}",
        "i need to get up at {time}",
        "set my alarm (for|to) {time} {date}",
        "create an alarm (for {time}|)",
        "make sure i'm up by {time}",
    ]),
    "weather": ("question", [
        "what's the weather (like|) (in {city}|) {date}",
        "what is the weather (in {city}|)",
        "(is it going to|will it) rain {date} (in {city}|)",
        "do i need an umbrella {date}",
        "how (cold|hot|warm) is it (outside|in {city})",
        "weather (forecast|) (for {city}|) {date}",
        "what's the forecast for {city}",
        "will it be sunny {date}",
        "how's the weather in {city} {date}",
        "should i wear a jacket {date}",
    ]),
    "time_query": ("question", [
        "what time is it (now|)",
        "what's the time (in {city}|)",
        "what time is it in {city}",
        "(tell|give) me the time",
        "do you know what time it is",
        "current time (in {city}|)",
        "what time do they have in {city} (right now|)",
        "how late is it",
        "time check",
        "is it noon yet",
    ]),
    "reminder_set": ("command", [
        "remind me to {task} (at {time}|{date}|)",
        "remind me {date} to {task}",
        "set a reminder to {task} (at {time}|)",
        "(can|could) you remind me to {task}",
        "don't let me forget to {task} {date}",
        "create a reminder for {time} to {task}",
        "add a reminder {task}",
        "i need a reminder to {task} at {time}",
    ]),
    "shopping_list_add": ("command", [
        "add {item} to (my|the) shopping list",
        "put {item} on the (shopping|grocery) list",
        "(we need|we're out of|i need) {item}",
        "add {item} and {item} to my list",
        "(can|could) you add {item} to the grocery list",
        "shopping list add {item}",
        "don't forget {item} on the shopping list",
        "write down {item} for the store",
        "we're running low on {item}",
    ]),
    "door_lock": ("command", [
        "lock the {door}",
        "(can|could) you lock the {door}",
        "is the {door} locked lock it",
        "lock (up|all the doors|everything)",
        "make sure the {door} is locked",
        "secure the {door}",
        "lock up the house",
        "{door} lock",
        "lock the {door} before i go",
    ]),
    "door_unlock": ("command", [
        "unlock the {door}",
        "(can|could) you unlock the {door}",
        "open the {door} lock",
        "let me in (through the {door}|)",
        "unlock (the door|everything|the house)",
        "disable the lock on the {door}",
        "{door} unlock",
        "i'm home unlock the {door}",
        "let the guests in through the {door}",
    ]),
    "vacuum_start": ("command", [
        "(start|run) the (vacuum|robot vacuum|vacuum cleaner)",
        "vacuum the {room}",
        "(can|could) you vacuum the {room}",
        "clean the {room} floor",
        "send the robot to clean the {room}",
        "start cleaning (the {room}|the house|)",
        "the {room} floor is dirty",
        "time to vacuum (the {room}|)",
        "run the roomba in the {room}",
    ]),
    "tv_on": ("command", [
        "(turn|switch) on the (tv|television)",
        "(turn|switch) the (tv|television) on (in the {room}|)",
        "tv on",
        "(can|could) you turn on the {room} tv",
        "power on the (tv|television)",
        "i want to watch (some|) tv",
        "wake up the tv (in the {room}|)",
        "start the television in the {room}",
    ]),
    "tv_channel": ("command", [
        "(change|switch) (the channel|) to {channel}",
        "put on {channel}",
        "(go to|tune to) {channel}",
        "(can|could) you switch the tv to {channel}",
        "watch {channel} (in the {room}|)",
        "next channel",
        "change the channel",
        "i want to watch {channel}",
        "flip to {channel}",
    ]),
    "call_contact": ("command", [
        "call {contact}",
        "(phone|ring|dial) {contact}",
        "(can|could) you call {contact} (for me|)",
        "give {contact} a call",
        "video call {contact}",
        "call {contact} on speaker",
        "i want to talk to {contact}",
        "get {contact} on the phone",
        "start a call with {contact}",
    ]),
    "calendar_query": ("question", [
        "what's on my calendar (for|) {date}",
        "do i have any (meetings|appointments|plans) {date}",
        "what's my schedule (like|) {date}",
        "am i free {date}",
        "(check|show|read) my calendar (for {date}|)",
        "what (meetings|appointments) do i have {date}",
        "is there anything on my agenda {date}",
        "when is my next meeting",
        "what do i have going on {date}",
    ]),
    "news": ("question", [
        "what's the (latest|) news",
        "(read|tell) me the {topic} (news|headlines)",
        "(give|play) me the (news|headlines|news briefing)",
        "what's happening in the world (today|)",
        "any {topic} news (today|)",
        "what are the headlines (today|this morning|)",
        "(catch|fill) me up on the {topic} news",
        "top stories (today|)",
        "news update",
        "what's new in {topic}",
    ]),
    "greeting": ("chat", [
        "(hi|hello|hey|hiya|howdy) (there|assistant|buddy|)",
        "good (morning|afternoon|evening) (assistant|there|)",
        "(hi|hello|hey) how are you (doing|today|)",
        "what's up",
        "(hello|hey) it's me",
        "how's it going",
        "hey there how's your day",
        "yo",
        "greetings",
        "hello again",
        "nice to meet you",
        "(morning|evening) (buddy|there|)",
    ]),
    "goodbye": ("chat", [
        "(bye|goodbye|see you|see ya) (for now|later|then|)",
        "good (night|bye) (assistant|)",
        "(talk|speak) to you (later|soon|tomorrow)",
        "i'm (going|heading out|off) (now|to bed|)",
        "(that's all|that is all|that will be all) (for now|for today|)",
        "catch you later",
        "i'm done (for today|here|)",
        "later",
        "bye bye",
        "have a (good|nice) (day|night|one)",
        "(ok|alright) goodbye",
    ]),
    "thanks": ("chat", [
        "(thanks|thank you|thanks a lot|thank you so much|many thanks) (assistant|buddy|)",
        "(thanks|thank you) (for the help|for that|that helped|)",
        "(that's|that was) (great|perfect|helpful|awesome) thanks",
        "(cheers|much appreciated|i appreciate it)",
        "(great|perfect|awesome|nice) (job|work) (thanks|)",
        "you're the best",
        "thanks a bunch",
        "ok thanks",
        "thx",
    ]),
    "joke": ("chat", [
        "tell me a (joke|funny joke|dad joke|knock knock joke)",
        "(do you know|got) any (good|funny|) jokes",
        "make me laugh",
        "(say|tell me) something funny",
        "i need a (laugh|joke) (today|right now|)",
        "(can|could) you tell me a joke",
        "joke please",
        "cheer me up with a joke",
        "what's your best joke",
        "another joke",
    ]),
    "help": ("chat", [
        "(help|help me|i need help)",
        "what can you do",
        "what (can|should) i (ask|say) (you|)",
        "how do i use (you|this|the assistant)",
        "(what are|list) your (commands|features|skills)",
        "(show|tell) me what you can do",
        "i'm (lost|confused|stuck)",
        "how does this work",
        "what are you able to help with",
        "(can|could) you help me (please|)",
    ]),
}

WRAPPERS = {
    "command": (["", "", "", "", "please", "hey", "ok", "um", "hey assistant", "alright", "uh"],
                ["", "", "", "", "please", "thanks", "now", "thank you", "right now", "for me"]),
    "question": (["", "", "", "", "hey", "um", "ok", "hey assistant", "quick question", "so"],
                 ["", "", "", "", "please", "thanks"]),
    "chat": (["", "", "", "", "", "oh", "ok", "well"], [""]),
}

OUT_OF_SCOPE_TEMPLATES = [
    "what is the capital of (peru|canada|kenya|norway|vietnam|chile|egypt)",
    "how do i (change a tire|bake sourdough|tie a tie|fix a leaky faucet|unclog a drain|write a resume)",
    "translate (good morning|thank you|where is the station|i love you) into (french|german|japanese|italian)",
    "book a (flight|train|hotel room) to (lisbon|denver|athens|dubai) (next month|on friday|)",
    "what's my (bank|credit card|savings) balance",
    "how many calories are in (an apple|a banana|a slice of pizza|a donut|a glass of milk)",
    "(recommend|suggest) a good (book|movie|podcast|restaurant|tv series) (to me|for tonight|)",
    "who (won|is winning) the (world cup|super bowl|election|oscars) (this year|last year|)",
    "what is (the square root of 144|12 times 17|15 percent of 80|two plus two)",
    "order (a pizza|sushi|a taxi|an uber|flowers) (for me|to my place|)",
    "how (tall|old) is (the eiffel tower|mount everest|the moon|the statue of liberty)",
    "what does the word (ephemeral|ubiquitous|serendipity|gregarious) mean",
    "(transfer|send) (100 dollars|fifty euros|money) to my (savings|landlord|friend)",
    "(is|are) (tomatoes|peanuts|bats|dolphins) (fruits|legumes|mammals|fish)",
    "who (wrote|directed|invented) (hamlet|the telephone|jaws|the light bulb|pride and prejudice)",
    "what's a good (name for a dog|gift for my wife|recipe for dinner|stock to buy)",
    "how do you say (cheese|hello|goodbye|water) in (spanish|korean|portuguese|dutch)",
    "(what is|explain) (quantum physics|machine learning|inflation|photosynthesis|a black hole)",
    "(can you|) (find|show) me (cheap flights|hotels in rome|a plumber nearby|used cars for sale)",
    "what's the (exchange rate|conversion rate) (for dollars to euros|from yen to pounds|)",
    "(help me|) (write|draft) (an email to my boss|a poem about the sea|a birthday card|a cover letter)",
    "how far is (the moon|mars|the sun|tokyo from here)",
    "(when|where) was (einstein|shakespeare|mozart|cleopatra) born",
    "what's the meaning of life",
    "(reset|change) my (password|pin|email address) (for my bank|for my account|)",
    "(pay|check) my (phone bill|electric bill|credit card bill|taxes)",
    "what's the best (programming language|diet|car|phone) (to learn|for me|this year|)",
    "how do i (get a passport|file my taxes|apply for a loan|renew my license)",
    "(play|let's play) (chess|trivia|twenty questions|a game) with me",
    "(book|reserve) a table for (two|four|six) at (an italian place|the steakhouse|a sushi bar)",
    "is my (flight|package|order) (delayed|on time|arriving today)",
    "what are the symptoms of (the flu|covid|a cold|allergies)",
    "(who is|tell me about) (the president|the pope|elon musk|the prime minister)",
]


def _pick_alternatives(template: str, rng: random.Random) -> str:
    return re.sub(r"\(([^()]*)\)", lambda m: rng.choice(m.group(1).split("|")), template)


def _fill(template: str, rng: random.Random) -> tuple[list[str], list[str]]:
    """Words and their BIO tags for one random filling of `template`."""
    words, tags = [], []
    for word in _pick_alternatives(template, rng).split():
        slot = re.fullmatch(r"\{(\w+)(?::(\w+))?\}", word)
        if slot is None:
            words.append(word)
            tags.append("O")
            continue
        name, pool = slot.group(1), slot.group(2) or slot.group(1)
        value = rng.choice(SLOT_VALUES[pool]).split()
        words += value
        tags += [f"B-{name}"] + [f"I-{name}"] * (len(value) - 1)
    return words, tags


def _typo(words: list[str], tags: list[str], rng: random.Random) -> list[str]:
    """Swap two letters in one untagged word, as a hurried typist would; word count is unchanged."""
    candidates = [i for i, (w, t) in enumerate(zip(words, tags)) if t == "O" and len(w) >= 4 and w.isalpha()]
    if not candidates:
        return words
    i = rng.choice(candidates)
    j = rng.randrange(1, len(words[i]) - 2)
    w = words[i]
    return words[:i] + [w[:j] + w[j + 1] + w[j] + w[j + 2:]] + words[i + 1:]


def _distinct(draw, count: int) -> list[Example]:
    """Up to `count` examples from `draw()` with distinct texts (fewer if the templates allow fewer)."""
    seen, examples = set(), []
    for _ in range(count * 40):
        if len(examples) == count:
            break
        example = draw()
        if example.text not in seen:
            seen.add(example.text)
            examples.append(example)
    return examples


def _utterances(intent: str, count: int, seed: str) -> list[Example]:
    kind, templates = INTENTS[intent]
    prefixes, suffixes = WRAPPERS[kind]
    rng = random.Random(f"{seed}:{intent}")

    def draw() -> Example:
        words, tags = _fill(rng.choice(templates), rng)
        prefix, suffix = rng.choice(prefixes).split(), rng.choice(suffixes).split()
        if set(suffix) & set(prefix + words):  # no "please ... please"
            suffix = []
        words, tags = prefix + words + suffix, ["O"] * len(prefix) + tags + ["O"] * len(suffix)
        if rng.random() < 0.05:
            words = _typo(words, tags, rng)
        return Example(" ".join(words), intent, tags)
    return _distinct(draw, count)


def _out_of_scope(count: int, seed: str) -> list[Example]:
    rng = random.Random(f"{seed}:{OUT_OF_SCOPE}")

    def draw() -> Example:
        words = _pick_alternatives(rng.choice(OUT_OF_SCOPE_TEMPLATES), rng).split()
        return Example(" ".join(words), OUT_OF_SCOPE, ["O"] * len(words))
    return _distinct(draw, count)


def examples() -> list[Example]:
    """Every labelled utterance, each text once (the first intent to produce a text keeps it)."""
    rows = [e for intent in INTENTS for e in _utterances(intent, PER_INTENT, "builtin")]
    rows += _out_of_scope(OUT_OF_SCOPE_COUNT, "builtin")
    unique: dict[str, Example] = {}
    for e in rows:
        unique.setdefault(e.text, e)
    return list(unique.values())


def labels() -> list[str]:
    return sorted([*INTENTS, OUT_OF_SCOPE])


def slot_labels(rows: list[Example]) -> list[str]:
    return ["O"] + sorted({t for e in rows for t in e.tags} - {"O"})


def splits(seed: int = 0) -> dict[str, Dataset]:
    """Train/validation/test, stratified by intent; a text is in one split only."""
    rows = examples()
    rng = random.Random(seed)
    parts = {"train": [], "validation": [], "test": []}
    for intent in labels():
        group = [e for e in rows if e.label == intent]
        rng.shuffle(group)
        n_val, n_test = (max(1, round(f * len(group))) for f in SPLIT_FRACTIONS.values())
        parts["validation"] += group[:n_val]
        parts["test"] += group[n_val:n_val + n_test]
        parts["train"] += group[n_val + n_test:]
    tags = slot_labels(rows)
    for part in parts.values():
        rng.shuffle(part)
    return {name: Dataset(part, labels(), tags, name=f"builtin-{name}") for name, part in parts.items()}


def write(folder: str | Path, seed: int = 0) -> Path:
    """Write the splits as JSONL plus labels.json, the layout `data.load_folder` reads."""
    folder = Path(folder)
    data = splits(seed)
    with atomic_dir(folder) as tmp:
        for name, dataset in data.items():
            lines = [json.dumps({"text": e.text, "label": e.label, "tags": e.tags}) for e in dataset.examples]
            (tmp / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta = {"labels": data["train"].labels, "tags": data["train"].slot_labels}
        (tmp / "labels.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return folder


def corpus(size: int = 6000) -> list[str]:
    """Unlabelled assistant-style sentences for tokenizer training and pre-training.

    Drawn from the same templates with another seed, minus every labelled text, so no validation or
    test utterance is seen verbatim before evaluation.
    """
    labelled = {e.text for e in examples()}
    per_intent = size // (len(INTENTS) + 1)
    rows = [e for intent in INTENTS for e in _utterances(intent, per_intent, "corpus")]
    rows += _out_of_scope(per_intent, "corpus")
    return [e.text for e in rows if e.text not in labelled]
