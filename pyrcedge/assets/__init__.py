"""Files on disk: the models and evaluation data pyrcedge fetches from package registries
(sha256 checked), and which GGUF file a model argument names. Imports only pyrcedge.errors."""
