"""Projection head of LIP-Loc (after 'simple CLIP'): encoder features -> shared embedding space."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """linear(in -> D), GELU, linear(D -> D), dropout, residual to the first linear, LayerNorm.

    Returns un-normalised embeddings; the two-tower model L2-normalises them.
    """

    def __init__(self, in_dim: int, embed_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, embed_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, features: Tensor) -> Tensor:
        """[B, in_dim] -> [B, embed_dim]."""
        projected = self.projection(features)
        x = self.fc(self.gelu(projected))
        x = self.dropout(x)
        return self.layer_norm(x + projected)
