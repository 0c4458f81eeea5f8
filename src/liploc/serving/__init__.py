"""``liploc serve``: localization over HTTP (FastAPI + uvicorn) and the map page."""
