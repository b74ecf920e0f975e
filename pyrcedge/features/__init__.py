"""Layer 3, the features over the cache engine and the statistics: saved sessions (session),
RC attribution (attribution) and explain (explain). Each is a set of functions over the seam
pyrcedge.Llama offers (seam.BudgetedModel); pyrcedge.Llama's methods hand over to them."""
