"""`glm47 bench`: a serving benchmark client for any OpenAI-compatible endpoint."""
