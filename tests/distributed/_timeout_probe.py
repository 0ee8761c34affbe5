"""Rank 1 skips a collective that rank 0 enters: rank 0's error must say what happened.

`torchrun --nproc-per-node 2 _timeout_probe.py OUT_DIR`; imports torch and drgrpo's
distributed module only, so that it starts fast.
"""

import json
import sys
import time
from pathlib import Path

from drgrpo.train import distributed as D

# 6 s: long enough for both ranks to start on a loaded machine (init uses the same timeout)
w = D.init_distributed(timeout_s=6)
if w.rank == 1:
    time.sleep(14)  # well past rank 0's timeout
else:
    try:
        D.any_rank(True)
        message = "no error"
    except RuntimeError as e:
        message = str(e)
    (Path(sys.argv[1]) / "timeout.json").write_text(json.dumps({"message": message}))
