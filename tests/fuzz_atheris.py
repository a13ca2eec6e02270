"""Coverage-guided byte fuzzing (atheris, libFuzzer) of htmp's own header parsers.

    python tests/fuzz_atheris.py safetensors|gguf [libFuzzer flags, e.g. -runs=100000 -max_len=4096]

Each input is written to a file of the format's suffix and run through the same property as the
hypothesis suite (with --no-htmp, so that the time goes to the parsers rather than the HTMP fit) (tests/fuzzing.py: `htmp analyze` analyses or refuses in one line, in bounded time
and memory). The corpus starts from the seed files; htmp's loader modules are instrumented, so
inputs that reach new branches of the parsers are kept and mutated further. A property violation
is an uncaught AssertionError, which libFuzzer reports with the input saved as crash-*.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["htmp_cli.loaders"]):
    import htmp_cli.loaders  # noqa: F401
    import htmp_cli.loaders.gguf_file  # noqa: F401
    import htmp_cli.loaders.safetensors  # noqa: F401

from fuzzing import check_case, seed_files  # noqa: E402

SUFFIX = {"safetensors": ".safetensors", "gguf": ".gguf"}


def main() -> None:
    form = sys.argv.pop(1) if len(sys.argv) > 1 and sys.argv[1] in SUFFIX else "safetensors"
    work = Path(tempfile.mkdtemp(prefix="htmp-atheris-"))
    corpus = work / "corpus"
    corpus.mkdir()
    seed = seed_files(work / "seeds")[form]
    (corpus / seed.name).write_bytes(seed.read_bytes())
    case = work / f"case{SUFFIX[form]}"

    def one_input(data: bytes) -> None:
        case.write_bytes(data)
        check_case(case, "--no-htmp")  # the parsers are the target; the HTMP fit would take most of the time

    atheris.Setup([sys.argv[0], *sys.argv[1:], str(corpus)], one_input)
    os.environ.setdefault("COLUMNS", "120")
    atheris.Fuzz()


if __name__ == "__main__":
    main()
