"""examples/chatbot: reply templates filled from slot tags, the fallback, and a scripted chat through a bundle."""
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

from edge_electra.tools import builtin_data

CHATBOT = Path(__file__).resolve().parents[1] / "examples" / "chatbot"
sys.path.insert(0, str(CHATBOT))
import assistant  # noqa: E402


def heard(label, text="", tags=None, abstained=False):
    """A Predictor-like result for `text` with one tag per word ("O" where not given)."""
    words = text.split()
    return SimpleNamespace(label=label, score=0.9, abstained=abstained,
                           slots=list(zip(words, tags or ["O"] * len(words))))


def test_every_builtin_intent_has_replies_and_oos_falls_back():
    assert set(assistant.REPLIES) == set(builtin_data.INTENTS)
    assert assistant.respond(heard("oos", "what is the capital of peru")) == assistant.FALLBACK
    assert assistant.respond(heard("an_intent_the_bot_never_saw")) == assistant.FALLBACK


def test_slots_fill_the_most_specific_reply():
    reply = assistant.respond(heard("lights_on", "turn on the lights in the living room",
                                    ["O", "O", "O", "O", "O", "O", "B-room", "I-room"]))
    assert reply == "Turning on the lights in the living room."
    assert assistant.respond(heard("lights_on", "lights on please")) == "Turning on the lights."
    reply = assistant.respond(heard("play_music", "play hey jude by the beatles",
                                    ["O", "B-song", "I-song", "O", "B-artist", "I-artist"]))
    assert reply == "Playing hey jude by the beatles."
    reply = assistant.respond(heard("shopping_list_add", "add eggs and olive oil to my list",
                                    ["O", "B-item", "O", "B-item", "I-item", "O", "O", "O"]))
    assert reply == "Added eggs and olive oil to your shopping list."


def test_every_intent_answers_without_slots_and_with_builtin_examples():
    for intent in builtin_data.INTENTS:
        assert assistant.respond(heard(intent, "hmm")) != assistant.FALLBACK, intent
    for e in builtin_data.splits()["test"].examples:
        reply = assistant.respond(heard(e.label, e.text, e.tags))
        assert "{" not in reply and (reply == assistant.FALLBACK) == (e.label == "oos"), e.text
        for name, values in assistant.slot_values(list(zip(e.text.split(), e.tags))).items():
            assert all(v in reply for v in values) or name not in str(assistant.REPLIES[e.label]), (e.text, reply)


def test_abstention_and_stray_inside_tags():
    assert assistant.respond(heard("lights_on", "lights on", abstained=True)) == assistant.FALLBACK
    # An I- tag without its B- (a model mistake) is not a slot; an untagged (truncated) word is skipped.
    assert assistant.slot_values([("x", "I-room"), ("kitchen", "B-room"), ("y", None)]) == {"room": ["kitchen"]}
    clock = assistant.respond(heard("time_query", "what time is it"), now=datetime(2026, 1, 2, 7, 5))
    assert clock == "It's 07:05."
    assert assistant.respond(heard("joke", "tell me a joke")) in assistant.JOKES


SCRIPT = ["turn on the lights in the kitchen", "", "what time is it", "play some jazz",
          "what is the capital of peru", "thanks"]


def chat(bundle, *args, block_torch=True, script=SCRIPT):
    """Run chatbot.py on `script` in a fresh interpreter; with block_torch, importing torch fails there."""
    guard = "import sys; sys.modules['torch'] = None; " if block_torch else "import sys; "
    code = (guard + f"sys.argv = ['chatbot.py', {str(bundle)!r}, *{list(args)!r}]; "
            f"import runpy; runpy.run_path({str(CHATBOT / 'chatbot.py')!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], input="\n".join(script) + "\n",
                          capture_output=True, text=True, timeout=120)


def test_scripted_chat_replies_line_by_line_without_torch(tiny_bundle):
    from edge_electra.runtime.predictor import Predictor
    bundle = tiny_bundle(task="joint")
    run = chat(bundle, "--debug")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    replies, debug = lines[1::2], lines[0::2]
    texts = [t for t in SCRIPT if t]
    assert len(replies) == len(texts) and all(d.startswith("  [") for d in debug)
    predictor = Predictor.load(bundle)
    for text, line, reply in zip(texts, debug, replies):
        prediction = predictor(text)  # the fixture's labels have no clock or joke replies: deterministic
        assert line.startswith(f"  [{prediction.label} {prediction.score:.2f}")
        assert reply == assistant.respond(prediction), text


def test_threshold_above_every_score_abstains_says_so_and_answers_the_help_message(tiny_bundle):
    run = chat(tiny_bundle(task="joint"), "--threshold", "1.01")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    notes, replies = lines[0::2], lines[1::2]
    assert replies == [assistant.FALLBACK] * len([t for t in SCRIPT if t])
    assert all(n.startswith("  (not sure") and "1.01" in n for n in notes)


def test_explain_shows_the_three_likeliest_intents_with_their_scores(tiny_bundle):
    from edge_electra.runtime.predictor import Predictor
    bundle = tiny_bundle(task="joint")
    run = chat(bundle, "--explain")
    assert run.returncode == 0, run.stderr
    explained = run.stdout.splitlines()[0::2]
    predictor = Predictor.load(bundle)
    for text, line in zip([t for t in SCRIPT if t], explained):
        probabilities = predictor.predict_proba([text])[0]
        shown = [part.rsplit(" ", 1) for part in line.strip().split(" | ")]
        assert len(shown) == 3
        assert [label for label, _ in shown] == [predictor.labels[i] for i in probabilities.argsort()[::-1][:3]]
        assert [float(score) for _, score in shown] == [round(float(p), 2) for p in sorted(probabilities)[::-1][:3]]


def test_quit_or_exit_ends_the_chat_and_skips_the_rest(tiny_bundle):
    bundle = tiny_bundle(task="joint")
    for word in ("quit", "EXIT"):
        run = chat(bundle, script=["what time is it", word, "turn on the lights"])
        assert run.returncode == 0, run.stderr
        assert len(run.stdout.splitlines()) == 2 and run.stdout.splitlines()[-1] == "Bye."


def test_a_missing_bundle_is_one_clear_line(tmp_path):
    run = chat(tmp_path / "nope")
    assert run.returncode == 1
    assert run.stderr.startswith("error: ") and len(run.stderr.strip().splitlines()) == 1
