"""A downstream app for the tests: client message types declared outside sessions_app."""
