"""DynamiCtrl Studio web app entry point (`python app.py`).

The Gradio Blocks UI is built in `ui/` (next milestone). Until it lands this entry
point says so and points at the CLI, which already runs the full model.
"""

import sys

MESSAGE = (
    "The DynamiCtrl Studio web UI is not built yet (it is the next milestone).\n"
    "Meanwhile animate an image from the command line:\n"
    "  python -m dynamictrl generate --image ref.png --pose-video pose.mp4 "
    '--prompt "..." --out out.mp4\n'
    "  python -m dynamictrl --help"
)


def main() -> int:
    print(MESSAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
