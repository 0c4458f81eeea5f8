"""Retrieval: embedding, the faiss index, metrics, evaluation protocols, LiDAR maps, localization, reports."""
