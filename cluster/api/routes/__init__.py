"""The coordinator's HTTP routes: one thin module per resource, over the services."""
