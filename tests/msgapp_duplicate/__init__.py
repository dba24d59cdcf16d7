"""A broken downstream app: it declares a type another app already declares."""
