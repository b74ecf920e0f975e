"""What both kvpress workers (bench/kvpress_worker.py, bench/kvpress_qa_worker.py) start with, in
.venv-kvpress: the job from stdin and the GGUF loaded by transformers (dequantized to float32)."""

import json
import os
import sys
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402


def job_and_model(attention: str) -> tuple[dict[str, Any], Any]:
    """(the JSON job on stdin, its "gguf" loaded with `attention` as the attention
    implementation, on job["threads"] threads, in eval mode)."""
    hf_logging.set_verbosity_error()
    job = json.loads(sys.stdin.read())
    torch.set_num_threads(job["threads"])
    path = job["gguf"]
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path),
                                                 gguf_file=os.path.basename(path),
                                                 dtype=torch.float32, attn_implementation=attention)
    model.eval()
    return job, model
