"""Layer 5, the applications: `pyrcedge run` (run), explain (explain, explain_html), the
terminal chat (chat), the OpenAI-compatible server (serve, with the llama_cpp.server shims in
server_compat), and the options they share (options). pyrcedge.cli dispatches to them."""
