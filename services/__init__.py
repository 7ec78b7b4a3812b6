"""Deployable mallops services. Each one imports only ``shared``, never another service."""
