"""A terminal chat with an on-device assistant: each line you type goes through a bundle, a reply comes back.

    python examples/chatbot/chatbot.py build/assistant.bundle --threshold 0.5
    printf 'turn on the lights in the kitchen\\nwhat time is it\\n' | python examples/chatbot/chatbot.py BUNDLE
    python examples/chatbot/chatbot.py BUNDLE --explain      # also the three likeliest intents and their scores

`quit`, `exit` or end of input (Ctrl-D) ends the chat. Below the out-of-scope threshold the bot does not guess:
it answers with the help message and says that it was unsure.

Only the Predictor runs (ONNX Runtime, OpenVINO or TensorRT, whatever the bundle was built for): no torch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from assistant import respond  # noqa: E402

from edge_electra.errors import EdgeElectraError  # noqa: E402
from edge_electra.runtime.predictor import Prediction  # noqa: E402
from edge_electra.runtime.predictor import Predictor  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", help="a bundle folder built by `edge-electra compile`")
    parser.add_argument("--threshold", type=float, default=None,
                        help="answer with the fallback when the top intent's probability is below this "
                             "(default: the bundle's own oos_threshold, if any)")
    parser.add_argument("--debug", action="store_true", help="also print the intent, its score and the slots")
    parser.add_argument("--explain", action="store_true", help="also print the three likeliest intents, with scores")
    args = parser.parse_args(argv)
    try:
        predictor = Predictor.load(args.bundle, oos_threshold=args.threshold)
    except EdgeElectraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    interactive = sys.stdin.isatty()
    if interactive:
        print("Say something ('quit', 'exit' or Ctrl-D to stop).")
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text.lower().strip(".!") in QUIT_WORDS:
            print(("bot> " if interactive else "") + "Bye.", flush=True)
            return 0
        prediction = predictor.predict_batch([text], probabilities=True)[0]
        if args.explain:
            print("  " + top_intents(predictor.labels, prediction))
        if args.debug:
            slots = " ".join(f"{w}/{t}" for w, t in prediction.slots or [] if t and t != "O")
            print(f"  [{prediction.label} {prediction.score:.2f}{' abstained' if prediction.abstained else ''}] "
                  f"{slots}")
        if prediction.abstained:
            print(f"  (not sure: the best intent scored {prediction.score:.2f}, below the out-of-scope threshold "
                  f"{predictor.oos_threshold:.2f}, so no guess)")
        print(("bot> " if interactive else "") + respond(prediction), flush=True)


QUIT_WORDS = {"quit", "exit"}


def top_intents(labels: list[str], prediction: Prediction, count: int = 3) -> str:
    """'lights_on 0.91 | lights_dim 0.04 | tv_on 0.01': the `count` likeliest intents."""
    probabilities = prediction.probabilities
    best = sorted(range(len(labels)), key=lambda i: -probabilities[i])[:count]
    return " | ".join(f"{labels[i]} {probabilities[i]:.2f}" for i in best)


if __name__ == "__main__":
    sys.exit(main())
