"""Placeholder: the 'oracle' command group is not implemented yet."""


def register(sub):
    pass
