import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _targets():
    try:
        return " ".join(sorted(workflow.dag_settings.targets)) or "all"
    except Exception:
        return ""


onstart:
    # Create/migrate the MLflow database once, before parallel jobs log into it, and open
    # this invocation's parent run: the jobs' runs nest under it ($BAFUSION_PARENT_RUN).
    from bafusion import tracking

    if tracking.enabled():
        tracking.ensure_db()
        tracking.begin_invocation(config, _targets())


onsuccess:
    from bafusion import tracking

    tracking.end_invocation(True)


onerror:
    from bafusion import tracking

    tracking.end_invocation(False)


def csv(values):
    return ",".join(str(v) for v in values or [])
