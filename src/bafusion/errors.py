"""Errors meant for the user: the CLI prints them as one line naming the file and the problem."""


class UserError(Exception):
    """Bad input or configuration: printed without a traceback, exit status 2."""


class InputFileError(UserError):
    """A named input file is missing, unreadable or inconsistent with another."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says the machine ran out of memory: a ``MemoryError`` (numpy's), torch's
    ``OutOfMemoryError`` (a GPU's) or a ``RuntimeError`` of torch's CPU allocator ("can't
    allocate memory": a ``ulimit -v``/``prlimit --as`` or a container's limit)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
