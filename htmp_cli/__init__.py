"""htmp: heavy-tail and random-matrix diagnostics for trained model weights.

`htmp_cli.analyze(source, **options)` returns a Report (of a LoRA adapter's updates too, and
`analyze_adapter(adapter, base)` compares the base and merged weights); `check` and `diff` give the objects that
`htmp check` and `htmp diff` print; `Monitor` watches a model's spectra while it trains. Importing this package imports none of numpy, torch,
matplotlib or pandas: each name below is loaded when first used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AdapterAnalysis", "CheckpointError", "HtmpError", "LayerResult", "Monitor", "OptionError", "Report", "ReportDiff",
           "StepReport", "Verdict", "analyze", "analyze_adapter", "check", "diff", "__version__"]

_LAZY = {"analyze": "htmp_cli.api", "analyze_adapter": "htmp_cli.api", "AdapterAnalysis": "htmp_cli.adapter", "check": "htmp_cli.api", "diff": "htmp_cli.api",
         "Report": "htmp_cli.results", "LayerResult": "htmp_cli.results",
         "Monitor": "htmp_cli.monitor", "StepReport": "htmp_cli.monitor", "Verdict": "htmp_cli.gate", "ReportDiff": "htmp_cli.compare",
         "HtmpError": "htmp_cli.errors", "OptionError": "htmp_cli.errors", "CheckpointError": "htmp_cli.errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'htmp_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
