"""presence_svc package."""
