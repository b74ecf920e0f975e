"""Layer 1, the patched libllama: the cffi binding of pyrcedge's C API (binding), the attention
statistics the kernels keep (stats), the RC estimator over them (rcstat), and llama_cpp's batch
filled with the logits only where something reads them (batch).

Imports nothing of pyrcedge but pyrcedge.errors; every other layer builds on this one.
"""
