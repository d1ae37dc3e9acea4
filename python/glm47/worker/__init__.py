"""glm47 GPU worker: model, engine and ZeroMQ service."""
