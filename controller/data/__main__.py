"""Rebuild the shipped dataset from the Debian CLDR packages: python -m controller.data"""

import json

from controller.data.cldr import build_cldr

if __name__ == "__main__":
    manifest = build_cldr()
    print(json.dumps({k: manifest[k] for k in ("name", "version", "splits")}, indent=1))
