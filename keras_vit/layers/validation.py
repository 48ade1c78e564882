"""Constructor argument checks that name the bad value."""


def check_positive_int(name, value):
    """Raise ValueError unless `value` is an int > 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; received {name}={value!r}")
    return value


def check_rate(name, value):
    """Raise ValueError unless `value` is a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1); received {name}={value!r}")
    return float(value)


def check_positive_float(name, value):
    """Raise ValueError unless `value` is a number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number; received {name}={value!r}")
    return float(value)
