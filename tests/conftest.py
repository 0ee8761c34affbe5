"""Suite-wide settings: offline Hugging Face, and one intra-op thread.

One thread keeps float reductions in the same order on every machine (golden values stay
golden) and avoids oversubscribing a small CI machine; the tests use tiny tensors anyway.
"""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
