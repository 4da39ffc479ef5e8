"""A terminal chat with an on-device assistant: each line you type goes through a bundle, a reply comes back.

    python examples/chatbot/chatbot.py build/assistant.bundle --threshold 0.5
    printf 'turn on the lights in the kitchen\\nwhat time is it\\n' | python examples/chatbot/chatbot.py BUNDLE

Only the Predictor runs (ONNX Runtime, OpenVINO or TensorRT, whatever the bundle was built for): no torch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from assistant import respond  # noqa: E402

from edge_electra.errors import EdgeElectraError  # noqa: E402
from edge_electra.runtime.predictor import Predictor  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", help="a bundle folder built by `edge-electra compile`")
    parser.add_argument("--threshold", type=float, default=None,
                        help="answer with the fallback when the top intent's probability is below this "
                             "(default: the bundle's own oos_threshold, if any)")
    parser.add_argument("--debug", action="store_true", help="also print the intent, its score and the slots")
    args = parser.parse_args(argv)
    try:
        predictor = Predictor.load(args.bundle, oos_threshold=args.threshold)
    except EdgeElectraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    interactive = sys.stdin.isatty()
    if interactive:
        print("Say something (Ctrl-D to quit).")
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        prediction = predictor(text)
        if args.debug:
            slots = " ".join(f"{w}/{t}" for w, t in prediction.slots or [] if t and t != "O")
            print(f"  [{prediction.label} {prediction.score:.2f}{' abstained' if prediction.abstained else ''}] "
                  f"{slots}")
        print(("bot> " if interactive else "") + respond(prediction), flush=True)


if __name__ == "__main__":
    sys.exit(main())
