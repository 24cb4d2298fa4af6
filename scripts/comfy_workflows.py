"""Write the example workflows' UI format (``workflows/comfyui/NAME.json``, what ComfyUI's editor opens) from
their API format (``NAME.api.json``) and ComfyUI's node definitions, then print one JSON line.

    python scripts/comfy_workflows.py --object-info object_info.json   # saved from GET /object_info
    python scripts/comfy_workflows.py --url http://127.0.0.1:8188       # a running ComfyUI with the pack
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

from portrait.comfy.workflow_format import ui_from_api

FOLDER = Path(__file__).resolve().parents[1] / "workflows" / "comfyui"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--object-info", type=Path, help="JSON of ComfyUI's GET /object_info")
    source.add_argument("--url", help="a running ComfyUI with the portrait nodes (127.0.0.1 only)")
    args = parser.parse_args(argv)
    if args.url is not None:
        if not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
            parser.error("--url must be a ComfyUI on this machine")
        with urllib.request.urlopen(f"{args.url}/object_info", timeout=30) as response:
            info = json.loads(response.read())
    else:
        info = json.loads(args.object_info.read_text())
    written = []
    for api_file in sorted(FOLDER.glob("*.api.json")):
        ui_file = api_file.with_name(api_file.name.replace(".api.json", ".json"))
        ui = ui_from_api(json.loads(api_file.read_text()), info)
        ui_file.write_text(json.dumps(ui, indent=1) + "\n")
        written.append(str(ui_file.relative_to(FOLDER.parents[1])))
    print(json.dumps({"written": written}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
