from roofline import copy_bandwidth  # noqa: F401  (session fixture)
