"""Build the API reference (HTML) from the docstrings with pdoc.

    python scripts/build_api_docs.py [OUTPUT_DIR]      (default: build/api)

Every public module of the package is documented (found by walking it, so a new module
cannot be forgotten); a module that fails to import fails the build.  CI runs this
before the tests (.ci/run).
"""

from __future__ import annotations

import pkgutil
import sys
import warnings
from pathlib import Path

import pdoc

import memotvm


def public_modules() -> list[str]:
    names = ["memotvm"]
    for info in pkgutil.walk_packages(memotvm.__path__, "memotvm."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def main(argv) -> int:
    out = argv[1] if len(argv) > 1 else "build/api"
    modules = public_modules()
    with warnings.catch_warnings():
        # pdoc warns where a package's __all__ already lists a module given here too.
        warnings.simplefilter("ignore")
        pdoc.pdoc(*modules, output_directory=Path(out))
    print(f"API reference: {len(modules)} modules -> {out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
