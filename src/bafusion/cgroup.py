"""Where this process's cgroup limits are: the folders of one controller (``cpu``, ``memory``) for
the process's cgroup and its parents, cgroup v2 (unified) or v1 (a hierarchy per controller).

:func:`bafusion.threads.cpu_quota` reads the CPU bandwidth limit from them and
:mod:`bafusion.fusion.memory` the memory and swap limits; each reads its own files, this module
only finds the folders (both walked the hierarchy with a copy of the same loop).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["controller_levels"]

#: The process's cgroup file and where the cgroup file system is mounted: the defaults of
#: :func:`controller_levels` (:mod:`bafusion.threads` and :mod:`bafusion.fusion.memory` keep
#: their own names for them, which tests point at a fake tree).
PROC_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"


def controller_levels(controller: str, proc_cgroup: str | None = None,
                      root: str | None = None) -> list[tuple[Path, bool]]:
    """The folders of one controller for this process's cgroup and each of its parents, from
    the cgroup itself up to the hierarchy's top, each with whether it is cgroup v1's.

    A cgroup v2 line of ``proc_cgroup`` (``0::/path``) gives ``root/path`` and its parents; a
    v1 line that names ``controller`` (``4:cpu,cpuacct:/path``) gives them under
    ``root/<controller>`` (``root/cpu``, the usual link to ``cpu,cpuacct``), or under
    ``root/<the line's controllers>`` where that folder does not exist. A hybrid system (v1
    lines beside a v2 line) gives both. Inside a container (a cgroup namespace, or v1's cgroup
    of the host's name not mounted) the limit is on the mount's top folder, which this reaches
    too; folders that do not exist are given all the same (a limit file there cannot be read).

    Parameters
    ----------
    controller : str
        The v1 controller whose hierarchy to walk: ``"cpu"``, ``"memory"``.
    proc_cgroup : str, optional
        The process's cgroup file (default :data:`PROC_CGROUP`).
    root : str, optional
        Where the cgroup file system is mounted (default :data:`CGROUP_ROOT`).

    Returns
    -------
    list of (pathlib.Path, bool)
        The folders, the process's own cgroup first for each line, with True for v1's; empty
        when ``proc_cgroup`` cannot be read (not Linux).
    """
    base = Path(CGROUP_ROOT if root is None else root)
    try:
        lines = Path(PROC_CGROUP if proc_cgroup is None else proc_cgroup).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return []
    levels: list[tuple[Path, bool]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # v2 (unified): 0::/path
            where, v1 = base, False
        elif controller in controllers.split(","):  # v1: N:cpu,cpuacct:/path, N:memory:/path
            where, v1 = base / controller, True
            if not where.is_dir():
                where = base / controllers
        else:
            continue
        rel_path = Path(rel.strip() or "/")
        levels.extend((where / str(d).lstrip("/"), v1) for d in [rel_path, *rel_path.parents])
    return levels
