"""Placeholder: the 'build' command group is not implemented yet."""


def register(sub):
    pass
