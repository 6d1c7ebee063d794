"""Placeholder: the 'run' command group is not implemented yet."""


def register(sub):
    pass
