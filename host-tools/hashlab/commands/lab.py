"""Placeholder: the 'lab' command group is not implemented yet."""


def register(sub):
    pass
