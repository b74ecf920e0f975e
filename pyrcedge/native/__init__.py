"""Layer 1, the patched libllama: the cffi binding of pyrcedge's C API (binding), the attention
statistics the kernels keep (stats) and the RC estimator over them (rcstat).

Imports nothing of pyrcedge but pyrcedge.errors; every other layer builds on this one.
"""
