"""Layer 2, the budgeted cache engine: budgets parsed and sized (budget), what a policy sees
(view), the eviction policies (policies) and the engine that asks them and evicts (engine).

Imports only the native layer and pyrcedge.errors.
"""
