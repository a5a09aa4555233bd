"""The fixed values the diagnostics' options take, torch-free and rich-free for the CLI.

gradients.py, report.py and curves.py check against these; the command line offers them as its
choices (help, completion, the refusal of another value) without importing their modules.
"""

from __future__ import annotations

POSITIONS = ("random", "task")  # gradients --at: where the windows end
MEASURES = ("loss", "jacobian")  # --measure: d loss_T / d h_(T-k), or the state Jacobian's norm
PROBE = "probe"  # --measure probe (with --at task): the key-readout probe, diagnostics/probe.py
NORMS = ("spectral", "frobenius")  # --norm: the Jacobian's matrix norm
# plot --x: what the curves are drawn against, and how the axis says it.
X_AXES = {"step": "step", "tokens": "training tokens", "time": "training time (s)"}
