"""Errors meant for the user: the CLI prints them as one line naming the file and the problem."""


class UserError(Exception):
    """Bad input or configuration: printed without a traceback, exit status 2."""


class InputFileError(UserError):
    """A named input file is missing, unreadable or inconsistent with another."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
