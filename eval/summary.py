"""Write ``<run>/demo_summary.json``: first and last text/image losses, VQ PSNR, seconds per stage.

    python eval/summary.py --config demo
"""

import json

from mmgen.cli import run_cli, start_stage
from mmgen.eval.summary import demo_summary
from mmgen.files import write_json


def main() -> None:
    paths = start_stage("summary", __doc__).paths
    summary = demo_summary(paths)
    write_json(paths.summary, summary)
    print(json.dumps(summary, indent=2))
    print(f"wrote {paths.summary}")


if __name__ == "__main__":
    run_cli(main)
