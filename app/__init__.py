"""The composition layer: natter's processes assembled from services, registry and stores, and the `natter` command."""
