"""Build the CLDR emoji dataset from the Debian CLDR packages (unicode-cldr-core, unicode-data).

    python -m controller.data                              # rebuild the shipped dataset
    python -m controller.data --out DIR --add it,pt,ko     # the 27 shipped locales and more,
                                                           # for XLT_DATA_DIR=DIR
"""

import argparse
import json
import sys
from pathlib import Path

from controller.data.cldr import DEBIAN_ANNOTATIONS, DEFAULT_LOCALES, SHIPPED_DIR, build_cldr
from registry.errors import XltError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=SHIPPED_DIR,
                    help="where to write the splits and manifest (default: the shipped copy)")
    ap.add_argument("--add", default="", help="CLDR locale stems to add, comma-separated "
                    f"(files under {DEBIAN_ANNOTATIONS})")
    args = ap.parse_args(argv)
    extra = [x.strip() for x in args.add.split(",") if x.strip()]
    try:
        manifest = build_cldr(out_dir=args.out,
                              locales=[*DEFAULT_LOCALES,
                                       *(x for x in extra if x not in DEFAULT_LOCALES)])
    except XltError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: manifest[k] for k in ("name", "version", "splits")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
