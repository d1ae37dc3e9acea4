"""The glm4_moe_lite model: configuration, layers, architecture, MTP layer and weight loading."""
