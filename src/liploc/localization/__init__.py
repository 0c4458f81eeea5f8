"""Localization against a LiDAR map: the map folder, the LiDAR map and its index, embedding,
localize, sequence matching, query images."""
